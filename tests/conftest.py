import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """Folder with mnist/ and fashion-mnist/ (CI sets MCEL_TEST_DATA); skip elsewhere."""
    root = os.environ.get("MCEL_TEST_DATA")
    if not root:
        pytest.skip("MCEL_TEST_DATA is not set: real MNIST/Fashion-MNIST tests skipped")
    path = Path(root)
    if not (path / "mnist").is_dir():
        pytest.fail(f"MCEL_TEST_DATA={root} has no mnist/ folder")
    return path
