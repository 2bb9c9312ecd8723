#!/usr/bin/env bash
# The Python packages benchmarks/gpu_check.py needs that a GPU machine without network lacks,
# as wheels in .whl/ (ignored by git), for its Python 3.12 on x86-64 Linux; about 55 MB.
#   bash benchmarks/gpu_wheels.sh
# There, before the check (README "Measuring on a GPU"):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# The versions are the ones the tests run with (requirements.txt); the machine's own torch,
# transformers, accelerate, safetensors, huggingface_hub, numpy, pandas and pyarrow are used.
set -euo pipefail
cd "$(dirname "$0")/.."  # .whl/ is in .gitignore
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  diffusers==0.42.1 peft==0.21.2 bitsandbytes==0.50.2 torchao==0.18.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
ls -la .whl
