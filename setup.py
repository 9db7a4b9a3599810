"""Finds every package of the four source folders and maps them into the `mailstack` namespace.

The repository keeps `smtp/`, `delivery/`, `imap/` and `templates/` at its top level (a fixed
layout); the wheel installs them as `mailstack.smtp`, ... (setuptools' package-dir mapping).
Packages are discovered, never listed, so a new subpackage cannot be left out of the wheel;
tests/test_wheel.py compares the built wheel with the tree.
"""

from setuptools import find_namespace_packages, setup

FOLDERS = {
    "mailstack": "mailstack",
    "mailstack.smtp": "smtp",
    "mailstack.delivery": "delivery",
    "mailstack.imap": "imap",
    "mailstack.templates": "templates",
}

packages: list[str] = []
for name, folder in FOLDERS.items():
    packages.append(name)
    # Namespace discovery: a folder of templates is a package too, so its files travel.
    subs = find_namespace_packages(folder, exclude=["__pycache__", "*.__pycache__"])
    packages.extend(f"{name}.{sub}" for sub in subs)

setup(packages=packages, package_dir=FOLDERS)
