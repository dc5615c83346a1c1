"""Test helper, started by torchrun: run a training script, then save each rank's final state.

    torchrun --nproc_per_node 2 tests/rank_states.py {student|teacher} OUT_FOLDER [script flags...]

Each rank writes OUT_FOLDER/rank<r>.pth = {'model': ..., 'distiller': ...} (state_dicts after the last
epoch), so a test can check that the ranks ended with the same weights and CRD memory bank.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import train_student  # noqa: E402
import train_teacher  # noqa: E402
from helper import distributed  # noqa: E402


def main() -> int:
    script, out, *argv = sys.argv[1:]
    module = {"student": train_student, "teacher": train_teacher}[script]
    run = module.run

    def run_and_save(job):
        progress = run(job)
        distiller = job.distiller.state_dict() if job.distiller is not None else {}
        torch.save({"model": job.model.state_dict(), "distiller": distiller},
                   Path(out) / f"rank{distributed.rank()}.pth")
        return progress

    module.run = run_and_save
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())
