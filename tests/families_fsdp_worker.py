"""Run under torchrun by test_families.py: train several planned points on FSDP2, each as
`forgetbench train POINT_JSON` trains it in every process (sweep.train_one), in one launch,
so the workers' imports (~10 s on two cores) are paid once, not once per family. The
process group the first point creates serves them all and ends after the last: torchrun's
rendezvous store hosts one group per launch."""
import sys
from pathlib import Path

from forgetbench.sweep import read_point, train_one
from forgetbench.train import distributed


def main(point_files: list[str]) -> None:
    try:
        for point_file in point_files:
            suite, pp, store = read_point(Path(point_file))
            train_one(suite, pp, store)
    finally:
        distributed.shutdown_group()


if __name__ == "__main__":
    main(sys.argv[1:])
