"""Config files (`python -m cl_jax.train --config configs/NAME.py`).

Each method's config file, by `config.method` (what scripts/compare_methods.py
trains and tests/test_methods.py checks):
"""

METHOD_CONFIGS = {"simclr": "mnist", "moco": "mnist_moco", "byol": "mnist_byol",
                  "supcon": "mnist_supcon", "triplet": "mnist_triplet", "margin": "mnist_margin",
                  "barlow_twins": "mnist_barlow_twins", "vicreg": "mnist_vicreg",
                  "simsiam": "mnist_simsiam", "mocov3": "mnist_mocov3", "nnclr": "mnist_nnclr",
                  "dino": "mnist_dino", "swav": "mnist_swav"}
