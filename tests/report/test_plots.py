from forgetbench.config import Point
from forgetbench.report import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLAIN = {"lr": 3e-3, "epochs": 4, "mix_ratio": 0, "regularizer": "none", "lam": 0}


def train_log(steps: int, every: int, *, kl: bool = True, stop_at: int | None = None) -> list[dict]:
    """A synthetic train_log.jsonl: step 0 evaluated, then one line per step, evaluations
    every ``every`` steps and at the last; early stopping ends it at ``stop_at``."""
    last = stop_at or steps
    log = [{"step": 0, "val_loss": 10.0, "general_loss": 0.7, **({"kl": 0.0} if kl else {})}]
    for step in range(1, last + 1):
        record = {"step": step, "loss": 5.0 / step, "lr": 1e-3}
        if step % every == 0 or step == last:
            record.update(val_loss=10.0 / step + 0.01 * step, general_loss=0.7 + 0.02 * step,
                          **({"kl": 0.01 * step} if kl else {}))
        log.append(record)
    return log


def test_training_curves_render_with_an_early_stopped_point():
    curves = [
        (Point(**PLAIN), train_log(78, 8), {"steps": 78, "last_step": 78}),
        (Point(**{**PLAIN, "regularizer": "l2", "lam": 0.1}), train_log(78, 8), {}),
        (Point(**PLAIN, patience=2), train_log(78, 8, stop_at=40),
         {"steps": 78, "last_step": 40, "best_step": 24, "stopped_early": True}),
        (Point(**{**PLAIN, "mix_ratio": 0.1}), train_log(78, 8, kl=False), None),
        (Point(**PLAIN, xi=2.6), [], None),  # no log: left out
    ]
    png = plots.training_curves(curves)
    assert png is not None and png.startswith(PNG_MAGIC)


def test_no_training_curves_without_an_in_training_evaluation():
    plain_log = [{"step": s, "loss": 1.0, "lr": 1e-3} for s in range(1, 10)]
    assert plots.training_curves([(Point(**PLAIN), plain_log, {})]) is None
    assert plots.training_curves([]) is None


def test_labels_leave_out_what_every_point_shares():
    labels, shared = plots._short_labels([Point(**PLAIN), Point(**{**PLAIN, "lr": 1e-3}),
                                          Point(**PLAIN, patience=2)])
    assert shared == "epochs 4, mix 0"
    assert labels == ["lr 0.003", "lr 0.001", "lr 0.003, patience 2"]
