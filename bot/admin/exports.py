"""The Export tab: a training dataset (SFT, DPO or KTO) built from the clinicians' feedback, downloaded
as a zip with its manifest; made by ``feedback.export`` as `careloop export` does, and audited the same
way, with the admin as the actor."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import gradio as gr

from bot.access import Viewer
from bot.admin.shared import AdminServices, AdminTab, handout
from bot.errors import UserError
from bot.pages import Require
from careloop.private import private_dir
from feedback.export import ExportConfig, export


@dataclass
class Exports:
    services: AdminServices

    def export(self, viewer: Viewer, kind: str, fmt: str) -> str:
        """Export a dataset; returns the path of a zip with the files and the manifest."""
        if kind not in ("sft", "dpo", "kto") or fmt not in ("jsonl", "parquet", "hf"):
            raise UserError(f"Unknown export {kind!r} / {fmt!r}: choose sft, dpo or kto as jsonl, parquet or hf.")
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
        out = private_dir(self.services.settings.home / "exports") / f"{stamp}-{kind}"
        try:
            export(self.services.sessions, ExportConfig(kind), out, fmt, actor=f"bot:{viewer.username}")
            archive = Path(shutil.make_archive(str(out), "zip", out))
            archive.chmod(0o600)  # the copy Gradio serves keeps this mode
            return str(archive)
        except ValueError as exc:
            raise UserError(f"Export failed: {exc}") from None
        except OSError as exc:
            Path(f"{out}.zip").unlink(missing_ok=True)  # a zip cut short by a full disk
            raise UserError(f"Export failed: the server could not write it ({exc.strerror or exc}). Ask whoever "
                            "runs careloop to free space on its disk, then export again.") from None


def build_exports_tab(exports: Exports, require: Require) -> AdminTab:
    with gr.Tab("Export") as tab:
        with gr.Row():
            kind = gr.Radio(["sft", "dpo", "kto"], value="dpo", label="Dataset")
            fmt = gr.Radio(["jsonl", "parquet", "hf"], value="jsonl", label="Format")
        button = gr.Button("Export", elem_id="export")
        download = gr.File(label="Download (zip with the manifest)", elem_id="export-file")

    def export(kind: str, fmt: str, request: gr.Request) -> str | None:
        viewer = require(request, "admin")
        try:
            return handout(exports.export(viewer, kind, fmt), request)
        except UserError as exc:  # one output: the skip alone, not refused()'s list
            gr.Warning(str(exc))
            return gr.skip()

    button.click(export, [kind, fmt], [download], api_name="admin_export")
    return AdminTab(tab)
