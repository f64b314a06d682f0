"""Package discovery that pyproject.toml alone cannot express: the codec lives in `dac-vae/`
(a folder name Python cannot import) and installs as `dac_vae`, subpackages included."""
from setuptools import find_packages, setup

codec = ["dac_vae"] + [f"dac_vae.{p}" for p in find_packages("dac-vae")]
setup(
    packages=find_packages(include=["speech", "speech.*", "flowae", "flowae.*"]) + codec,
    package_dir={"dac_vae": "dac-vae"},
)
