# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Headless Chromium from Debian's packages, driven through its chromedriver by Selenium.

`require` installs ``chromium`` and ``chromium-driver`` when absent (as the PostgreSQL and Slurm
tests install their servers); `start` opens a browser with a fresh profile and every background
network feature off, since nothing may be fetched from outside.
"""

from __future__ import annotations

__all__ = ["PACKAGES", "require", "start"]

from pathlib import Path

from servers import debian

PACKAGES = ("chromium", "chromium-driver")
_ARGUMENTS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
              "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
              "--window-size=1280,1600")


def require() -> str | None:
    """`None` if chromium and chromedriver are there (installed now if need be), else why not."""
    return debian.require(["chromium", "chromedriver"], PACKAGES)


def start(profile: Path):
    """Start headless Chromium with the profile directory ``profile`` (created fresh); the browser's
    console messages are kept for ``get_log("browser")``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = debian.which("chromium")
    for argument in (*_ARGUMENTS, f"--user-data-dir={profile}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=debian.which("chromedriver")))
