# Source this on a fresh GPU machine that has torch but may lack nanochat's light dependencies:
#   . benchmarks/gpu_setup.sh
# It installs whatever is missing from wheels carried in .wheels/ (pip download --python-version 3.12 ...),
# and puts src/ on PYTHONPATH so `python3 -m nanochat` runs this checkout.
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
missing=""
for m in typer:typer rich:rich rustbpe:rustbpe platformdirs:platformdirs starlette:starlette uvicorn:uvicorn yaml:pyyaml pytest:pytest pytest_timeout:pytest-timeout tiktoken:tiktoken safetensors:safetensors requests:requests; do
  python3 -c "import ${m%%:*}" 2>/dev/null || missing="$missing ${m##*:}"
done
if [ -n "$missing" ]; then
  echo "installing:$missing"
  python3 -m pip install -q --no-index --find-links .wheels $missing 2>&1 | tail -3
fi
python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
python3 -c "import pyarrow" 2>/dev/null || echo "note: pyarrow missing (only --data web and imports need it)"
