#!/usr/bin/env bash
# Distils resnet32x4 into resnet8x4 with every method, using the paper's hyper-parameters
# (-r: cross-entropy weight, -a: KD weight, -b: the method's own loss weight).
# The teacher comes from scripts/fetch_pretrained_teachers.sh (or scripts/run_cifar_vanilla.sh
# followed by copying its checkpoint there). Summarise with scripts/collect_results.py.
# Extra arguments go to every run, e.g. `bash scripts/run_cifar_distill.sh --trial 2`.
# Run it inside the project's environment (e.g. after `source .venv/bin/activate`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# KD
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill kd --model_s resnet8x4 -r 0.1 -a 0.9 -b 0 --trial 1 "$@"
# FitNet
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill hint --model_s resnet8x4 -r 1 -a 0 -b 100 --trial 1 "$@"
# AT
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill attention --model_s resnet8x4 -r 1 -a 0 -b 1000 --trial 1 "$@"
# SP
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill similarity --model_s resnet8x4 -r 1 -a 0 -b 3000 --trial 1 "$@"
# CC
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill correlation --model_s resnet8x4 -r 1 -a 0 -b 0.02 --trial 1 "$@"
# VID
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill vid --model_s resnet8x4 -r 1 -a 0 -b 1 --trial 1 "$@"
# RKD
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill rkd --model_s resnet8x4 -r 1 -a 0 -b 1 --trial 1 "$@"
# PKT
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill pkt --model_s resnet8x4 -r 1 -a 0 -b 30000 --trial 1 "$@"
# AB
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill abound --model_s resnet8x4 -r 1 -a 0 -b 1 --trial 1 "$@"
# FT
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill factor --model_s resnet8x4 -r 1 -a 0 -b 200 --trial 1 "$@"
# FSP
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill fsp --model_s resnet8x4 -r 1 -a 0 -b 50 --trial 1 "$@"
# NST
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill nst --model_s resnet8x4 -r 1 -a 0 -b 50 --trial 1 "$@"
# CRD
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd --model_s resnet8x4 -r 1 -a 0 -b 0.8 --trial 1 "$@"
# CRD+KD
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill crd --model_s resnet8x4 -r 1 -a 1 -b 0.8 --trial 1 "$@"
# DKD (replaces KD: -a 0; --dkd_beta is the authors' per-pair value, README "DKD, DIST and logit standardisation")
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill dkd --model_s resnet8x4 -r 1 -a 0 -b 1 --dkd_beta 8 --trial 1 "$@"
# DIST (-b 2: the authors' kd_loss_weight, tau 4)
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill dist --model_s resnet8x4 -r 1 -a 0 -b 2 --dist_tau 4 --trial 1 "$@"
# KD+LS (logit standardisation: base temperature 2, kd_weight 9)
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill kd --model_s resnet8x4 -r 0.1 -a 9 -b 0 --kd_T 2 --logit_stand --trial 1 "$@"
# DKD+LS (alpha and beta times kd_weight 9, temperature 2)
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill dkd --model_s resnet8x4 -r 1 -a 0 -b 1 --logit_stand --dkd_T 2 --dkd_alpha 9 --dkd_beta 72 --trial 1 "$@"
# ReviewKD's -b for the paper's other pairs (the authors' weights; the vgg/MobileNetV2 pairs have none published, 5 is ours):
#   resnet56 -> resnet20 0.6, resnet110 -> resnet32 1, wrn_40_2 -> wrn_16_2 / wrn_40_1 / ShuffleV1 5,
#   resnet32x4 -> ShuffleV1 5, resnet32x4 -> ShuffleV2 8; vgg13 -> vgg8 / MobileNetV2, ResNet50 -> MobileNetV2 / vgg8 5
# ReviewKD (-b: the authors' weight for this pair; ramps up over --reviewkd_warmup 20 epochs)
python train_student.py --path_t ./save/models/resnet32x4_vanilla/ckpt_epoch_240.pth --distill reviewkd --model_s resnet8x4 -r 1 -a 0 -b 5 --trial 1 "$@"
