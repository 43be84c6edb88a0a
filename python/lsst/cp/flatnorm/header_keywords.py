# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Where a post-ISR flat's FITS header gives each value: `HeaderKeywords`.

Its own module, free of astropy and the middleware, so that ``cp-flatnorm ingest --help`` can list
the fields at once; `lsst.cp.flatnorm.flat_fits` reads the headers with it.
"""

from __future__ import annotations

__all__ = ["HeaderKeywords", "Keywords"]

import os
from typing import Annotated, Any

import pydantic
import yaml


def _keyword_list(value: Any) -> Any:
    """Take ``"A"`` or ``"A,B"`` for ``("A", "B")``; FITS keywords are upper case."""
    if isinstance(value, str):
        value = value.split(",")
    if isinstance(value, (list, tuple)):
        return tuple(str(keyword).strip().upper() for keyword in value if str(keyword).strip())
    return value


Keywords = Annotated[tuple[str, ...], pydantic.BeforeValidator(_keyword_list)]
"""Header keywords tried in order; the first one present wins."""


class HeaderKeywords(pydantic.BaseModel):
    """Where a flat's header gives each value, and what to assume where it says nothing.

    Every ``Keywords`` field is a list of keywords tried in order (a string ``"A,B"`` is
    accepted), looked up in the image HDU's header, then in the primary header.
    """

    model_config = pydantic.ConfigDict(frozen=True, extra="forbid")

    start_time: Keywords = pydantic.Field(("DATE-OBS",), description="Start of the exposure, ISO 8601, UTC.")
    start_time_of_day: Keywords = pydantic.Field(
        ("TIME-OBS",), description="Time of day (UTC) completing a start_time that is a date alone."
    )
    start_mjd: Keywords = pydantic.Field(
        ("MJD-OBS",), description="Start of the exposure as a UTC MJD, if no start_time keyword is present."
    )
    exposure_time: Keywords = pydantic.Field(("EXPTIME",), description="Exposure time in seconds, > 0.")
    physical_filter: Keywords = pydantic.Field(
        ("FILTER",), description="Physical filter; it must be registered for the instrument."
    )
    detector: Keywords = pydantic.Field(
        ("DETECTOR", "CCDNUM", "EXTNAME"),
        description="Detector: an integer is a detector ID of the camera, text a detector name.",
    )
    exposure_id: Keywords = pydantic.Field(
        ("EXPID", "EXPNUM"),
        description="Exposure ID, an integer >= 0; without one, day_obs * 100000 + seq_num.",
    )
    seq_num: Keywords = pydantic.Field(
        ("SEQNUM",), description="Sequence number in the day, an integer >= 0; without one, the exposure ID."
    )
    obs_id: Keywords = pydantic.Field(
        ("OBSID",), description="Observation ID; without one, the exposure ID as text."
    )
    observation_type: Keywords = pydantic.Field(
        ("IMGTYPE", "OBSTYPE"), description="Observation type (lower-cased, as in Rubin's records)."
    )
    observation_reason: Keywords = pydantic.Field(("REASON",), description="Observation reason.")
    unit: Keywords = pydantic.Field(
        ("BUNIT",), description="Pixel unit: adu (or count, DN) or electron; adu without it."
    )
    gain: Keywords = pydantic.Field(
        ("GAIN",), description="Gain in electrons per ADU, to estimate a missing variance plane."
    )
    read_noise: Keywords = pydantic.Field(
        ("RDNOISE", "READNOIS"), description="Read noise in electrons, to estimate a missing variance plane."
    )
    default_observation_type: str = pydantic.Field("flat", min_length=1)
    default_observation_reason: str = pydantic.Field("flat", min_length=1)
    default_gain: float | None = pydantic.Field(
        None, gt=0, description="Gain (electrons per ADU) of images in ADU whose header has none."
    )
    default_read_noise: float = pydantic.Field(
        0.0, ge=0, description="Read noise (electrons) of images whose header has none."
    )

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], **overrides: Any) -> HeaderKeywords:
        """Read the fields from a YAML (or JSON) mapping; ``overrides`` win over the file's values.

        Raises
        ------
        OSError, yaml.YAMLError, pydantic.ValidationError
            Raised if the file cannot be read, is not YAML, or has unknown fields or bad values.
        """
        with open(path) as stream:
            values = yaml.safe_load(stream) or {}
        return cls.model_validate({**values, **overrides})
