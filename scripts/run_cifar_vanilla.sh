#!/usr/bin/env bash
# Trains the six vanilla teachers of the paper on CIFAR-100 (one run each, 240 epochs).
# Checkpoints go to ./save/models/<model>_cifar100_lr_..._trial_0/; the paper's own teachers can
# be downloaded instead with scripts/fetch_pretrained_teachers.sh.
# Extra arguments go to every run, e.g. `bash scripts/run_cifar_vanilla.sh --epochs 1`.
# `python` is the activated environment's, else ./.venv's when there is one (scripts/use_venv.sh).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/use_venv.sh

python train_teacher.py --model wrn_40_2 "$@"
python train_teacher.py --model resnet56 "$@"
python train_teacher.py --model resnet110 "$@"
python train_teacher.py --model resnet32x4 "$@"
python train_teacher.py --model vgg13 "$@"
python train_teacher.py --model ResNet50 "$@"
