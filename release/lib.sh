# Sourced by the GPU scripts (gpu.sh, gpu_check.sh, gpu_release.sh): what they share.

# The Python to run: $PYTHON when set, else the repository's .venv, else python3 on PATH.
repo_python() {  # repo_python REPO
  if [ -n "${PYTHON:-}" ]; then
    echo "$PYTHON"
  elif [ -x "$1/.venv/bin/python" ]; then
    echo "$1/.venv/bin/python"
  else
    command -v python3 || echo python3
  fi
}
