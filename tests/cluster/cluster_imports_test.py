"""Tests that `tf_decentral.cluster` and the launcher never import TF."""

import os
import pathlib
import subprocess
import sys
import textwrap

from absl.testing import absltest

import tf_decentral

_REPO_ROOT = pathlib.Path(tf_decentral.__file__).resolve().parent.parent

# Runs in a fresh interpreter: `None` in `sys.modules` makes any import of
# TensorFlow or Keras raise ImportError.
_PROGRAM = textwrap.dedent(
    """
    import contextlib
    import importlib
    import io
    import pkgutil
    import sys

    for blocked in ("tensorflow", "keras", "tf_keras", "jax", "torch"):
        sys.modules[blocked] = None

    import tf_decentral.cluster as cluster
    import tf_decentral.launch

    for module in pkgutil.walk_packages(
        cluster.__path__, prefix="tf_decentral.cluster."
    ):
        importlib.import_module(module.name)

    config = cluster.parse_tf_config(
        '{"cluster": {"chief": ["a:1"], "worker": ["b:1"]},'
        ' "task": {"type": "worker", "index": 0}}'
    )
    with contextlib.redirect_stdout(io.StringIO()) as dry_run:
        code = cluster.main(["--workers", "2", "--ps", "1", "--dry-run"])
    launched = cluster.launch(
        [sys.executable, "-c", "print('ok')"],
        cluster.local_cluster_configs(2),
        stdout=io.StringIO(),
    )
    heavy = sorted(
        name
        for name, module in sys.modules.items()
        if module is not None
        and name.split(".")[0] in ("tensorflow", "keras", "tf_keras")
    )
    print(
        f"rank={config.worker_index} dry_run={code} "
        f"exports={dry_run.getvalue().count('export TF_CONFIG=')} "
        f"launched={launched} heavy={heavy}"
    )
    """
)


class NoTensorFlowImportTest(absltest.TestCase):
    def test_cluster_imports_and_works_without_tensorflow(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(_REPO_ROOT), env.get("PYTHONPATH")])
        )
        result = subprocess.run(
            [sys.executable, "-c", _PROGRAM],
            cwd=_REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(
            result.stdout.strip(),
            "rank=1 dry_run=0 exports=3 launched=0 heavy=[]",
        )


if __name__ == "__main__":
    absltest.main()
