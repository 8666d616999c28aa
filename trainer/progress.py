"""A run's progress within its SFT and DPO steps: a TrainerCallback that reports TRL's optimizer steps
to the run's ``runs.StepProgress`` (the percentage and ETA `careloop runs` and the admin page show).
Apart from ``trainer.sft`` and ``trainer.dpo``: the pipeline hands it to both.
"""

from __future__ import annotations


def progress_callback(tracker, step: str):  # noqa: ANN001, ANN201 - runs.StepProgress -> TrainerCallback
    """A TrainerCallback recording optimizer steps done of max_steps, for the run's progress and ETA."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs) -> None:  # noqa: ANN001, ARG002
            tracker.start(step, state.max_steps)

        def on_step_end(self, args, state, control, **kwargs) -> None:  # noqa: ANN001, ARG002
            tracker.advance(to=state.global_step)

    return _Progress()
