"""Python toolchain that runs py_binary/py_test targets with the repo's venv.

TensorFlow, Keras, numpy and pytest come from the pip environment in
`<workspace>/.venv`, not from Bazel deps, so tests must run under that
interpreter. The interpreter is found at fetch time:

  1. `--repo_env=TF_DECENTRAL_PYTHON=/abs/path/to/python`, if set;
  2. `<workspace>/.venv/bin/python`, if it exists;
  3. `python3` on PATH (with a warning: TF may then be missing).

The choice is made when the Bazel server starts (local repository rule); after
creating or moving .venv, run `bazel shutdown` or `bazel sync --configure`.
"""

_ENV = "TF_DECENTRAL_PYTHON"

_BUILD = """\
load("@bazel_tools//tools/python:toolchain.bzl", "py_runtime_pair")

py_runtime(
    name = "py3_runtime",
    interpreter_path = "{python}",
    python_version = "PY3",
    stub_shebang = "#!{python}",
)

py_runtime_pair(
    name = "runtime_pair",
    py3_runtime = ":py3_runtime",
)

toolchain(
    name = "toolchain",
    toolchain = ":runtime_pair",
    toolchain_type = "@bazel_tools//tools/python:toolchain_type",
)
"""

def _python_venv_impl(rctx):
    python = rctx.os.environ.get(_ENV, "")
    if not python:
        workspace = rctx.path(Label("@//:WORKSPACE")).dirname
        venv_python = workspace.get_child(".venv").get_child("bin").get_child("python")
        if venv_python.exists:
            python = str(venv_python)
    if not python:
        found = rctx.which("python3")
        if found == None:
            fail("No Python found: create .venv or set --repo_env=%s" % _ENV)
        python = str(found)
        print("WARNING: no .venv/bin/python; py_test targets use %s" % python)
    rctx.file("BUILD", _BUILD.format(python = python))

python_venv = repository_rule(
    implementation = _python_venv_impl,
    configure = True,
    environ = [_ENV],
    local = True,
)
