# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Throwaway servers for the tests: a PostgreSQL server (`servers.postgres`) and a single-node Slurm
cluster (`servers.slurm`) on loopback, from Debian's packages, which `servers.debian` installs when
they are absent and the tests run as root (as CI does on a fresh machine)."""
