"""Tests that `tf_decentral.cluster` and the launcher never import TF."""

import textwrap

from absl.testing import absltest

from tf_decentral.testing import cluster as testing_cluster

# Runs in a fresh interpreter that cannot import TensorFlow or Keras
# (`tf_decentral.testing.cluster.run_without_tensorflow`).
_PROGRAM = textwrap.dedent(
    """
    import contextlib
    import importlib
    import io
    import pkgutil
    import sys

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
    heavy = heavy_modules()
    print(
        f"rank={config.worker_index} dry_run={code} "
        f"exports={dry_run.getvalue().count('export TF_CONFIG=')} "
        f"launched={launched} heavy={heavy}"
    )
    """
)


class NoTensorFlowImportTest(absltest.TestCase):
    def test_cluster_imports_and_works_without_tensorflow(self):
        result = testing_cluster.run_without_tensorflow(_PROGRAM, timeout=60)
        self.assertEqual(result.returncode, 0, msg=result.stderr)
        self.assertEqual(
            result.stdout.strip(),
            "rank=1 dry_run=0 exports=3 launched=0 heavy=[]",
        )


if __name__ == "__main__":
    absltest.main()
