#!/usr/bin/env bash
# ImageNet: the CRD paper's ResNet34 -> ResNet18 and mdistiller's ResNet50 -> MobileNetV1, every method that
# has an ImageNet setting, under torchrun with NGPU processes (one per GPU; 8 by default):
#   NGPU=4 DATA=/datasets/imagenet bash scripts/run_imagenet.sh [extra flags for every run]
# DATA holds train/<wnid>/*.JPEG and val/<wnid>/*.JPEG. The teachers are torchvision's published weights
# (downloaded into torch's hub cache on first use). Each process takes --batch_size 32: 8 GPUs make the
# recipe's global batch of 256 at learning rate 0.1, other counts scale the rate linearly (train_*.py does it).
# Every other default is the ImageNet recipe's (dataset/info.py: 100 epochs, decay x0.1 at 30/60/90, weight
# decay 1e-4, --nce_k 16384, --feat_dim 128). Add --data_backend dali for GPU JPEG decoding (NVIDIA DALI).
# Weights: KD and DKD are mdistiller's ImageNet configs, DIST its authors' (tau 1, weight 2); AT, SP, CC, VID, RKD, PKT and CRD use the CRD paper's
# CIFAR weights (its ImageNet runs publish none of their own). Runs land in ./save/imagenet; the table at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/use_venv.sh
NGPU="${NGPU:-8}"
DATA="${DATA:-./data/imagenet}"

# Vanilla students (the "Student" row)
torchrun --standalone --nproc_per_node "$NGPU" train_teacher.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --model ResNet18 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_teacher.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --model MobileNetV1 --trial 1 "$@"

# ResNet34 (torchvision, 73.31) -> ResNet18
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill kd -r 0.5 -a 0.5 -b 0 --kd_T 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill attention -r 1 -a 0 -b 1000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill similarity -r 1 -a 0 -b 3000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill correlation -r 1 -a 0 -b 0.02 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill vid -r 1 -a 0 -b 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill rkd -r 1 -a 0 -b 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill pkt -r 1 -a 0 -b 30000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill crd -r 1 -a 0 -b 0.8 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill crd -r 1 -a 1 -b 0.8 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 0.5 --dkd_T 1 --dkd_warmup 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet34_Weights.IMAGENET1K_V1 --model_s ResNet18 --distill dist -r 1 -a 0 -b 2 --dist_tau 1 --trial 1 "$@"

# ResNet50 (torchvision IMAGENET1K_V1, 76.13) -> MobileNetV1
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill kd -r 0.5 -a 0.5 -b 0 --kd_T 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill attention -r 1 -a 0 -b 1000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill similarity -r 1 -a 0 -b 3000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill correlation -r 1 -a 0 -b 0.02 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill vid -r 1 -a 0 -b 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill rkd -r 1 -a 0 -b 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill pkt -r 1 -a 0 -b 30000 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill crd -r 1 -a 0 -b 0.8 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill crd -r 1 -a 1 -b 0.8 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill dkd -r 1 -a 0 -b 1 --dkd_alpha 1 --dkd_beta 2 --dkd_T 1 --dkd_warmup 1 --trial 1 "$@"
torchrun --standalone --nproc_per_node "$NGPU" train_student.py --dataset imagenet --data_folder "$DATA" --save_root ./save/imagenet --batch_size 32 --path_t torchvision:ResNet50_Weights.IMAGENET1K_V1 --model_s MobileNetV1 --distill dist -r 1 -a 0 -b 2 --dist_tau 1 --trial 1 "$@"

python scripts/collect_results.py --save_root ./save/imagenet
