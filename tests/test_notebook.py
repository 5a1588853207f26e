"""notebooks/simclr_mnist.ipynb runs top to bottom in a fresh kernel (short mode)."""

import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK = os.path.join(ROOT, "notebooks", "simclr_mnist.ipynb")


@pytest.mark.slow
def test_notebook_runs_in_short_mode(mnist_data_dir, tmp_path, monkeypatch):
  notebook = nbformat.read(NOTEBOOK, as_version=4)
  parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  # What papermill would inject: small values after the defaults.
  parameters.source += (
      f"\nnum_epochs = 1\nmax_train_examples = 1024\nworkdir = {str(tmp_path / 'run')!r}"
      f"\ndata_dir = {mnist_data_dir!r}\neval_train_examples = 2000\ntsne_points = 200\n")
  # The kernel inherits this process's environment: one device is enough.
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
  client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                   resources={"metadata": {"path": os.path.join(ROOT, "notebooks")}})
  client.execute()
  outputs = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code"
                    for o in c.get("outputs", []))
  assert "<- anchors 0..N-1 point at themselves" in outputs
  assert "example loss: 4.5e+15" in outputs or "example loss: 4.49e+15" in outputs, outputs[-2000:]
  assert os.path.exists(tmp_path / "run" / "tsne.png")
