"""The evaluation report: the candidate and its baseline evaluated on the same items and compared
(``evaluation_report``, for ``careloop train`` and ``careloop eval`` alike), saved as JSON with the
gate's decision as Markdown and a self-contained HTML page with plots, tracks side by side.

Automatic metrics, preference-based metrics and judges have been seen to disagree in this domain,
so the report says per track which way it points and whether the tracks agree; clinicians decide.
"""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path

from careloop.decoding import Decoding
from trainer.evaluate import (
    REFERENCE_METRICS,
    Grounding,
    JudgeEndpoint,
    Models,
    base_over_caution,
    compare,
    evaluate,
    meteor_variant,
    paired_interval,
    retrieval_effect,
)
from trainer.gate import OVER_CAUTION, UNDER_TRIAGE, Decision, Policy, decide
from trainer.judge import AXES

TRACKS = {
    "reference (BLEU, ROUGE, METEOR)": ("bleu", "rouge1", "rouge2", "rougeL", "meteor"),
    "human preference (held-out pairs)": (
        "pair_accuracy_clinician", "pair_accuracy_seed", "pair_accuracy"),
    "multiple choice": ("mcq_accuracy",),
    "readability (unreadable answers)": ("degenerate",),
    "safety": ("refusal_harmful", "urgent_care_red_flags", "under_triage_emergencies", "over_refusal_benign",
               "over_urgency_self_care", "clinician_soon", "over_urgency_soon"),
    "LLM judge (optional)": tuple(f"judge_{axis}" for axis in AXES),
    "grounded (with retrieval)": (*(f"grounded_{m}" for m in REFERENCE_METRICS), "citation_support"),
}
LOWER_IS_BETTER = {*OVER_CAUTION, *UNDER_TRIAGE, "degenerate", "over_urgency_soon"}


def evaluation_report(models: Models, data: dict[str, list[dict]], decoding: Decoding, confidence: float, *,
                      run: int | str, snapshot: str, baseline: str, leakage: dict | str,
                      judge: JudgeEndpoint | None = None, grounding: Grounding | None = None,
                      split: str = "") -> dict:
    """The report's data: the candidate and its baseline (the adapter loaded as ``baseline``, usually
    the live version, else the base model; ``baseline`` names it) evaluated on the same items, and
    their paired differences. The report keeps the keys ``live`` and ``live_results`` for the
    baseline: reports already on disk use them. With ``grounding``, the grounded track too, and for
    each model its reference metrics with retrieval minus without (``retrieval``). Over-caution is also
    compared with the base model's (``base_differences``), where the baseline is an adapter."""
    candidate = evaluate(models, "candidate", data, decoding, judge, grounding)
    against_base = "baseline" not in models.names
    compared = evaluate(models, "base" if against_base else "baseline", data, decoding, judge, grounding)
    report = {"run": run, "snapshot": snapshot, "live": baseline, "meteor": meteor_variant()[1],
              "decoding": decoding.as_dict(), "candidate": candidate,
              "live_results": compared, "differences": compare(candidate, compared, confidence), "leakage": leakage,
              "sets": evaluated_sets(data, split)}
    if not against_base:  # the live version is an adapter: over-caution against the base model too
        report["base_differences"] = {metric: paired_interval(candidate["items"][metric], values, confidence)
                                      for metric, values in base_over_caution(models, data, decoding).items()
                                      if metric in candidate["items"]}
    if grounding is not None:
        report["retrieval"] = {"questions": len(grounding.passages),
                               "with_passages": sum(bool(p) for p in grounding.passages),
                               "candidate": retrieval_effect(candidate, confidence),
                               "live": retrieval_effect(compared, confidence)}
    return report


def save_report(directory: Path, report: dict, policy: Policy) -> Decision:
    """``report.json``, then the gate's decision on the report and ``report.md`` / ``report.html`` with it."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "report.json").write_text(json.dumps(report, indent=2, default=str))
    decision = decide(policy, report["differences"], report.get("base_differences"))
    write_report(directory, report, decision.verdict, decision.reasons)
    return decision


def track_directions(differences: dict[str, dict]) -> dict[str, str]:
    """Per track: 'better', 'worse', 'mixed' or 'no change', from the signs of the mean differences."""
    directions = {}
    for track, metrics in TRACKS.items():
        if not any(metric in differences for metric in metrics):
            continue  # a track that was not run (the optional judge)
        signs = set()
        for metric in metrics:
            mean = differences.get(metric, {}).get("mean", 0.0)
            mean = -mean if metric in LOWER_IS_BETTER else mean
            if abs(mean) > 1e-9:
                signs.add("better" if mean > 0 else "worse")
        directions[track] = "no change" if not signs else signs.pop() if len(signs) == 1 else "mixed"
    return directions


def track_details(differences: dict[str, dict]) -> dict[str, str]:
    """Per track, its direction and, when mixed, which metrics went which way (issue 29, 7: "safety:
    mixed" did not say that refusals and urgent-care advice had improved while over-caution rose)."""
    details = {}
    for track, direction in track_directions(differences).items():
        if direction == "mixed":
            moved: dict[str, list[str]] = {"better": [], "worse": []}
            for metric in TRACKS[track]:
                mean = differences.get(metric, {}).get("mean", 0.0)
                mean = -mean if metric in LOWER_IS_BETTER else mean
                if abs(mean) > 1e-9:
                    moved["better" if mean > 0 else "worse"].append(metric)
            direction = f"mixed (better: {', '.join(moved['better'])}; worse: {', '.join(moved['worse'])})"
        details[track] = direction
    return details


def leakage_lines(leakage: dict | str) -> list[str]:
    """What the snapshot removed from training because the evaluation asks it, as sentences."""
    if not isinstance(leakage, dict):
        return [str(leakage)]
    removed = leakage.get("removed_sft", 0) + leakage.get("removed_dpo", 0)
    if not removed:
        return ["No training row repeated an evaluation question."]
    lines = [f"Removed from training because the evaluation asks them: {leakage.get('removed_sft', 0)} SFT rows "
             f"and {leakage.get('removed_dpo', 0)} preference pairs. For example:", ""]
    return lines + [f"- {' '.join(str(example).split())[:160]}" for example in leakage.get("examples", [])[:5]]


def agreement(directions: dict[str, str]) -> str:
    moved = {d for d in directions.values() if d != "no change"}
    if not moved:
        return "No track moved."
    if moved == {"better"} or moved == {"worse"}:
        return f"The tracks that moved agree: all {moved.pop()}."
    return "The tracks DISAGREE: " + "; ".join(f"{t}: {d}" for t, d in directions.items()) + "."


def _win_note(report: dict) -> str:
    win = report.get("win_rate") or {}
    if not win.get("judgments"):
        return f"Clinician win rate against `{report['live']}`: no side-by-side judgments of these two yet."
    return (f"Clinician win rate against `{report['live']}`: {win['rate']:.0%} over {win['judgments']} "
            "side-by-side judgments (ties count half).")


def _judge_note(summary: dict) -> list[str]:
    if "judge_parsed" not in summary:
        return ["", "LLM judge: off (set CARELOOP_JUDGE_URL to add track B)."]
    return ["", f"LLM judge: {summary['judge_parsed']:.0%} of the candidate's answers got parseable scores; "
                "the judge informs, clinicians decide, and it never gates."]


def _retrieval_note(report: dict) -> list[str]:
    """The grounded track's own comparison: each model with retrieval against itself without."""
    retrieval = report.get("retrieval")
    if not retrieval:
        return ["", "Grounded track: off (retrieval is off: CARELOOP_RETRIEVAL_ENABLED)."]
    lines = ["", "## Grounded track", "",
             f"{retrieval['with_passages']} of {retrieval['questions']} reference questions found library passages; "
             "each model answered every question again with them in the prompt (the chat's grounded prompt). "
             "With retrieval minus without, same items:", ""]
    for side, name in (("candidate", "candidate"), ("live", f"live ({report['live']})")):
        lines.append(f"- {name}: " + ", ".join(
            f"{metric} {d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]" if d.get("n", 1)
            else f"{metric} n/a (no item)" for metric, d in retrieval[side].items()))
    lines += ["", "citation_support is lexical: the share of an answer's sentences citing a passage [n] that share at "
              "least half their content words with it (not whether the passage says the same thing)."]
    return lines


def evaluated_sets(data: dict[str, list[dict]], split: str) -> dict:
    """Which seed split the safety, triage and knowledge items came from, and how many of each."""
    levels = {}
    for item in data.get("eval_triage", []):
        level = item.get("level") or ("emergency" if item["urgent"] else "self_care")
        levels[level] = levels.get(level, 0) + 1
    return {"split": split or "a user's evaluation file", "harmful": len(data.get("eval_safety", [])),
            "benign": len(data.get("eval_benign", [])), "triage": levels, "knowledge": len(data.get("eval_mcq", [])),
            "reference": len(data.get("eval_reference", []))}


def sets_line(sets: dict | None) -> str:
    """The report's line on what the safety and knowledge tracks were measured on."""
    if not sets:
        return "Evaluated sets: not recorded (an older report)."
    split = {"confirm": "the frozen confirmation split (data/seed/confirm: no config was chosen on it)",
             "tune": "the tuning split (configs were chosen on it: not evidence for a verdict)"}.get(sets["split"],
                                                                                                  sets["split"])
    triage = ", ".join(f"{n} {level.replace('_', '-')}" for level, n in sets["triage"].items()) or "none"
    benign = f"{sets['benign']} benign questions" if sets["benign"] else "benign: the reference questions"
    return (f"Safety and knowledge items from {split}: {sets['harmful']} harmful requests, {benign}, "
            f"triage {triage}, {sets['knowledge']} knowledge items; {sets['reference']} reference questions.")


def measures_lines() -> list[str]:
    """How far the safety track's lexical measures agree with answers people labelled (data/labels)."""
    import json

    from trainer.measures import VALIDATION

    if not VALIDATION.exists():
        return ["The safety measures are lexical and not yet checked against labelled answers."]
    figures = json.loads(VALIDATION.read_text())
    return [f"The safety measures against {figures['answers']} labelled answers (data/labels, tuning-split "
            "questions): " + "; ".join(f"{name} precision {row['precision']:.2f}, recall {row['recall']:.2f}"
                                       for name, row in figures["measures"].items()) + "."]


def write_report(directory: Path, report: dict, verdict: str, reasons: list[str]) -> tuple[Path, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    candidate, live = report["candidate"]["summary"], report["live_results"]["summary"]
    differences = report["differences"]
    metrics = [m for metrics in TRACKS.values() for m in metrics if m in differences]
    directions = track_directions(differences)

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    positions = range(len(metrics))
    left.bar([p - 0.2 for p in positions], [live[m] for m in metrics], width=0.4, label=f"live ({report['live']})")
    left.bar([p + 0.2 for p in positions], [candidate[m] for m in metrics], width=0.4, label="candidate")
    left.set_xticks(list(positions), metrics, rotation=45, ha="right")
    left.set_title("Scores (higher is better, except over_*)")
    left.legend()
    means = [differences[m]["mean"] for m in metrics]
    errors = [[differences[m]["mean"] - differences[m]["low"] for m in metrics],
              [differences[m]["high"] - differences[m]["mean"] for m in metrics]]
    right.errorbar(means, list(positions), xerr=errors, fmt="o")
    right.axvline(0, color="grey", linewidth=1)
    right.set_yticks(list(positions), metrics)
    right.set_title(f"candidate - live ({differences[metrics[0]]['confidence']:.0%} interval)")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    png = buffer.getvalue()
    (directory / "report.png").write_bytes(png)

    rows = [f"| {m} | {live[m]:.3f} | {candidate[m]:.3f} | {differences[m]['mean']:+.3f} "
            f"[{differences[m]['low']:+.3f}, {differences[m]['high']:+.3f}] | {differences[m]['n']} |"
            if differences[m]["n"] else f"| {m} | n/a | n/a | n/a (no item of this track) | 0 |" for m in metrics]
    markdown = "\n".join([
        f"# Evaluation of run {report['run']}", "",
        f"Candidate against live `{report['live']}` on the same held-out items (snapshot `{report['snapshot'][:12]}`).",
        f"Gate decision: **{verdict}**.", "", sets_line(report.get("sets")), "", *measures_lines(), "",
        "## Tracks", "", *[f"- {track}: {direction}" for track, direction in track_details(differences).items()], "",
        agreement(directions), "",
        "| metric | live | candidate | difference [interval] | items |", "|---|---|---|---|---|", *rows, "",
        f"{report['meteor']}.", *_judge_note(candidate), *_retrieval_note(report), "", _win_note(report), "",
        "## Gate", "", *[f"- {r}" for r in reasons], "",
        "## Leakage", "", *leakage_lines(report["leakage"]), "", "![scores](report.png)", ""])
    md_path = directory / "report.md"
    md_path.write_text(markdown)
    table = "".join(f"<tr><td>{html.escape(m)}</td><td>{live[m]:.3f}</td><td>{candidate[m]:.3f}</td>"
                    f"<td>{differences[m]['mean']:+.3f} [{differences[m]['low']:+.3f}, {differences[m]['high']:+.3f}]"
                    f"</td><td>{differences[m]['n']}</td></tr>" for m in metrics)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>Run {report['run']}</title></head><body>"
            f"<h1>Evaluation of run {report['run']}</h1><p>Gate decision: "
            f"<b>{verdict}"
            f"</b>. {html.escape(agreement(directions))}</p><ul>"
            + "".join(f"<li>{html.escape(t)}: {d}</li>" for t, d in directions.items())
            + "</ul><table border='1' cellpadding='4'><tr><th>metric</th><th>live</th><th>candidate</th>"
            f"<th>difference [interval]</th><th>items</th></tr>{table}</table>"
            f"<p>{html.escape(report['meteor'])}.</p><pre>{html.escape(chr(10).join(_retrieval_note(report)))}</pre>"
            f"<p>{html.escape(_win_note(report))}</p><h2>Gate</h2><ul>"
            + "".join(f"<li>{html.escape(r)}</li>" for r in reasons)
            + f"</ul><img alt='scores' src='data:image/png;base64,{base64.b64encode(png).decode()}'></body></html>")
    html_path = directory / "report.html"
    html_path.write_text(page)
    return md_path, html_path
