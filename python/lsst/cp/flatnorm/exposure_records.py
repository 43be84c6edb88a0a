# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Exposure dimension records of flat exposures, written the same way for every instrument.

The simulator and ``cp-flatnorm ingest`` both describe their exposures with `ExposureInfo` and
insert them with `insert_exposure_records`, so a repository of simulated flats and one of a real
camera's flats have the same records (``observation_type``/``observation_reason`` included, which
the normalization's down-selection reads).
"""

from __future__ import annotations

__all__ = ["ExposureInfo", "insert_exposure_records", "day_obs_timespan"]

import dataclasses
import datetime
from collections.abc import Sequence
from typing import Any

import astropy.time
import astropy.units as u

from lsst.daf.butler import Butler, Timespan

_DAY_OBS_ROLLOVER_HOURS = 12  # day_obs runs from noon to noon UTC


@dataclasses.dataclass(frozen=True)
class ExposureInfo:
    """What the exposure record of one flat exposure says.

    Attributes
    ----------
    id : `int`
        Exposure ID.
    obs_id : `str`
        Observation ID, unique per exposure; also the exposure's group name.
    seq_num : `int`
        Sequence number within ``day_obs``.
    day_obs : `int`
        Day of observation, ``YYYYMMDD``.
    physical_filter : `str`
        Physical filter; it must be registered for the instrument.
    begin : `astropy.time.Time`
        Start of the exposure.
    exposure_time : `float`
        Exposure time in seconds.
    observation_type, observation_reason : `str`
        ``"flat"`` unless a header says otherwise.
    science_program, target_name : `str`
        Free text of the record.
    has_simulated : `bool`
        Whether the pixels are simulated.
    """

    id: int
    obs_id: str
    seq_num: int
    day_obs: int
    physical_filter: str
    begin: astropy.time.Time
    exposure_time: float
    observation_type: str = dataclasses.field(default="flat", kw_only=True)
    observation_reason: str = dataclasses.field(default="flat", kw_only=True)
    science_program: str = dataclasses.field(default="FLATS", kw_only=True)
    target_name: str = dataclasses.field(default="FlatField", kw_only=True)
    has_simulated: bool = dataclasses.field(default=False, kw_only=True)

    @property
    def end(self) -> astropy.time.Time:
        return self.begin + self.exposure_time * u.s

    def record(self, instrument: str) -> dict[str, Any]:
        """Return the ``exposure`` dimension record of this exposure."""
        return {
            "instrument": instrument,
            "id": self.id,
            "obs_id": self.obs_id,
            "day_obs": self.day_obs,
            "group": self.obs_id,
            "physical_filter": self.physical_filter,
            "exposure_time": self.exposure_time,
            "dark_time": self.exposure_time,
            "observation_type": self.observation_type,
            "observation_reason": self.observation_reason,
            "seq_num": self.seq_num,
            "seq_start": self.seq_num,
            "seq_end": self.seq_num,
            "target_name": self.target_name,
            "science_program": self.science_program,
            "has_simulated": self.has_simulated,
            "can_see_sky": False,
            "timespan": Timespan(self.begin, self.end),
        }


def day_obs_timespan(day_obs: int) -> Timespan:
    """The day of observation ``day_obs`` (YYYYMMDD), from noon UTC to the next noon UTC."""
    date = datetime.datetime.strptime(str(day_obs), "%Y%m%d")
    begin = date + datetime.timedelta(hours=_DAY_OBS_ROLLOVER_HOURS)
    end = begin + datetime.timedelta(days=1)
    return Timespan(astropy.time.Time(begin, scale="utc"), astropy.time.Time(end, scale="utc"))


def insert_exposure_records(butler: Butler, instrument: str, exposures: Sequence[ExposureInfo]) -> None:
    """Insert the day_obs, group and exposure records of ``exposures`` in one transaction.

    ``Butler.registry.addDataIdValue`` cannot fill the metadata of these records (exposure
    times, observation type, timespans, ...), so they are inserted directly.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler; the instrument and the exposures' physical filters must be registered.
    instrument : `str`
        Instrument name.
    exposures : `~collections.abc.Sequence` [`ExposureInfo`]
        The exposures; an exposure whose record already exists raises
        `lsst.daf.butler.registry.ConflictingDefinitionError` and nothing is inserted.
    """
    registry = butler.registry
    with registry.transaction():
        for day_obs in sorted({exposure.day_obs for exposure in exposures}):
            registry.syncDimensionData(
                "day_obs", {"instrument": instrument, "id": day_obs, "timespan": day_obs_timespan(day_obs)}
            )
        registry.insertDimensionData(
            "group", *[{"instrument": instrument, "name": exposure.obs_id} for exposure in exposures]
        )
        registry.insertDimensionData("exposure", *[exposure.record(instrument) for exposure in exposures])
