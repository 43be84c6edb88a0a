# This file is part of cp_flatnorm.
# Use of this source code is governed by a 3-clause BSD-style license (see LICENSE).

"""Reading post-ISR flat FITS files without a repository: layouts, header keywords, pixels, masks,
variance, and every refusal's message."""

import logging

import astropy.io.fits as fits
import numpy as np
import pydantic
import pytest
from astropy.time import Time
from flat_files import BAD_COLUMN, CAMERA, DAY_OBS, Flats, write_afw_file, write_detector_file, write_mef

from lsst.cp.flatnorm.flat_fits import FlatIngestError, HeaderKeywords, day_obs_of, scan_flats
from lsst.cp.flatnorm.flat_mask import MASK_PLANES
from lsst.images import MaskedImage

FLATS = Flats()
FILTERS = {"sim_g", "sim_r", "sim_i"}
CORE_PLANES = [plane.name for plane in MASK_PLANES]
DETECTORS = list(CAMERA)


def scan(paths, **keywords):
    return scan_flats(paths, CAMERA, FILTERS, HeaderKeywords(**keywords))


def problems(paths, **keywords):
    with pytest.raises(FlatIngestError) as error:
        scan(paths, **keywords)
    return list(error.value.problems)


def column(detector, value=True):
    """Boolean pixels, true in column BAD_COLUMN only."""
    bbox = detector.getBBox()
    pixels = np.zeros((bbox.getHeight(), bbox.getWidth()), dtype=bool)
    pixels[:, BAD_COLUMN] = value
    return pixels


def test_mef_gives_one_flat_per_hdu_with_estimated_variance(tmp_path):
    path = write_mef(tmp_path / "mef.fits", FLATS, 0)
    sources = scan([path])
    assert [(s.where, s.hdu, s.detector_id) for s in sources] == [
        (f"{path} HDU {i + 1} ({det.getName()})", i + 1, det.getId()) for i, det in enumerate(DETECTORS)
    ]
    exposure = sources[0].exposure
    assert exposure.id == FLATS.exposure_id(0) == DAY_OBS * 100_000 + 1
    assert exposure.day_obs == DAY_OBS  # 05:00 UTC on June 2nd is before the noon rollover
    assert exposure.begin == Time("2024-06-02T05:00:00", scale="utc")
    assert (exposure.exposure_time, exposure.physical_filter) == (10.0, "sim_r")
    assert (exposure.observation_type, exposure.observation_reason) == ("flat", "flat")  # IMGTYPE = 'FLAT'
    assert (exposure.obs_id, exposure.seq_num) == (str(exposure.id), exposure.id)
    assert all(source.exposure == exposure for source in sources)
    for source, det in zip(sources, DETECTORS):
        image = source.read()
        np.testing.assert_array_equal(image.image.array, FLATS.adu(0, det))
        np.testing.assert_allclose(image.variance.array, FLATS.variance(0, det), rtol=1e-6)
        assert list(image.mask.schema.names) == CORE_PLANES
        assert not image.mask.array.any()
        assert image.metadata["VARIANCE_SOURCE"] == (
            f"estimated with gain {FLATS.gain(det):g} e-/unit, read noise 4 e-")
        assert (image.metadata["INGEST_FILE"], image.metadata["INGEST_HDU"]) == (str(path), source.hdu)


def test_detector_file_with_mask_and_variance_planes(tmp_path, caplog):
    det = DETECTORS[1]
    path = write_detector_file(tmp_path / "det.fits", FLATS, 1, det)
    with caplog.at_level(logging.INFO, logger="lsst.cp.flatnorm.flat_mask"):
        [source] = scan([path])
        image = source.read()
    assert (source.where, source.detector_id) == (f"{path} HDU 1 (IMAGE)", det.getId())
    expected = FLATS.adu(1, det)
    expected[:, BAD_COLUMN] = 0.0
    np.testing.assert_array_equal(image.image.array, expected)
    np.testing.assert_array_equal(image.variance.array, FLATS.variance(1, det).astype(np.float32))
    assert image.metadata["VARIANCE_SOURCE"] == "file"
    assert list(image.mask.schema.names) == CORE_PLANES + ["GLOW"]
    for name in ("BAD", "SAT", "GLOW"):
        np.testing.assert_array_equal(image.mask.get(name), column(det))
    for name in ("CR", "DETECTED", "NO_DATA"):
        assert not image.mask.get(name).any()
    assert "GLOW are not afw's standard planes; kept under their own names" in caplog.text


def test_afw_file_is_read_with_read_legacy(tmp_path, monkeypatch, caplog):
    calls = []
    read_legacy = MaskedImage.read_legacy

    def spy(uri, **kwargs):
        calls.append(uri)
        return read_legacy(uri, **kwargs)

    monkeypatch.setattr(MaskedImage, "read_legacy", staticmethod(spy))
    det = DETECTORS[4]
    path = write_afw_file(tmp_path / "afw.fits", FLATS, 2, det)
    with caplog.at_level(logging.INFO, logger="lsst.cp.flatnorm.flat_mask"):
        [source] = scan([path])
        image = source.read()
    assert calls == [path]
    assert source.detector_id == det.getId()
    np.testing.assert_array_equal(image.image.array, FLATS.adu(2, det))
    np.testing.assert_array_equal(image.variance.array, FLATS.variance(2, det).astype(np.float32))
    assert str(image.unit) == "adu"
    assert list(image.mask.schema.names) == CORE_PLANES + [
        "INTRP", "EDGE", "DETECTED_NEGATIVE", "SUSPECT", "MYPLANE"]
    np.testing.assert_array_equal(image.mask.get("BAD"), column(det))
    np.testing.assert_array_equal(image.mask.get("MYPLANE"), column(det))
    assert not image.mask.get("SAT").any()
    assert "MYPLANE are not afw's standard planes" in caplog.text


def test_mask_without_plane_cards_flags_bad(tmp_path, caplog):
    det = DETECTORS[0]
    mask = np.where(column(det), 5, 0).astype(np.int32)
    primary = fits.PrimaryHDU(header=fits.Header({**FLATS.cards(0), "DETECTOR": det.getId(), "GAIN": 1.5}))
    path = tmp_path / "plain_mask.fits"
    fits.HDUList([primary, fits.ImageHDU(FLATS.adu(0, det), name="IMAGE"),
                  fits.ImageHDU(mask, name="MASK")]).writeto(path)
    with caplog.at_level(logging.INFO, logger="lsst.cp.flatnorm.flat_mask"):
        image = scan([path])[0].read()
    np.testing.assert_array_equal(image.mask.get("BAD"), column(det))
    assert list(image.mask.schema.names) == CORE_PLANES
    assert f"{path} HDU 1 (IMAGE): the MASK HDU has no MP_ cards naming its bits" in caplog.text


def test_non_finite_pixels_are_no_data(tmp_path):
    det = DETECTORS[0]
    data = FLATS.adu(0, det)
    data[2, 5] = np.nan
    data[3, 7] = np.inf
    path = write_mef(tmp_path / "nan.fits", FLATS, 0, detectors=[det], data=data)
    image = scan([path])[0].read()
    assert set(zip(*np.nonzero(image.mask.get("NO_DATA")))) == {(2, 5), (3, 7)}


def test_image_in_electrons_has_unit_gain(tmp_path):
    """BUNIT in the primary header is inherited; the HDUs' GAIN cards do not apply to electrons."""
    det = DETECTORS[2]
    electrons = FLATS.electrons(0, det).astype(np.float32)
    path = write_mef(tmp_path / "e.fits", FLATS, 0, cards={**FLATS.cards(0), "BUNIT": "electron"},
                     detectors=[det], data=electrons)
    image = scan([path])[0].read()
    assert str(image.unit) == "electron"
    np.testing.assert_allclose(image.variance.array, electrons + FLATS.read_noise**2, rtol=1e-6)


def test_default_gain_and_read_noise(tmp_path):
    det = DETECTORS[3]
    path = write_mef(tmp_path / "bare.fits", FLATS, 0, detectors=[det], noise_cards=False)
    assert problems([path]) == [f"{path} HDU 1 ({det.getName()}): no VARIANCE HDU, and no gain to estimate "
                                "the variance "
                                "with (looked for GAIN; no default gain)"]
    image = scan([path], default_gain=2.5, default_read_noise=6.0)[0].read()
    np.testing.assert_allclose(image.variance.array, FLATS.adu(0, det) / 2.5 + (6.0 / 2.5)**2, rtol=1e-6)


def test_primary_image_ccdnum_expnum_and_mjd(tmp_path):
    """A one-HDU file: the image in the primary HDU, the detector an integer, the start an MJD."""
    det = DETECTORS[2]
    start = Time("2024-06-02T13:00:00", scale="utc")
    header = fits.Header({"CCDNUM": det.getId(), "EXPNUM": 123456, "MJD-OBS": start.mjd, "EXPTIME": 5.0,
                          "FILTER": "sim_g", "OBSTYPE": "DomeFlat", "OBSID": "CAM_123456", "GAIN": 1.0})
    path = tmp_path / "primary.fits"
    fits.PrimaryHDU(FLATS.adu(0, det), header=header).writeto(path)
    [source] = scan([path])
    assert (source.where, source.detector_id) == (f"{path} HDU 0", det.getId())
    exposure = source.exposure
    assert (exposure.id, exposure.obs_id, exposure.observation_type) == (123456, "CAM_123456", "domeflat")
    assert exposure.day_obs == 20240602  # after noon
    assert abs((exposure.begin - start).sec) < 1e-6


def test_exposure_id_from_day_obs_and_seqnum(tmp_path):
    cards = {**FLATS.cards(1), "SEQNUM": 17}
    del cards["EXPID"]
    path = write_mef(tmp_path / "seq.fits", FLATS, 1, cards=cards, detectors=DETECTORS[:1])
    exposure = scan([path])[0].exposure
    assert (exposure.id, exposure.seq_num) == (DAY_OBS * 100_000 + 17, 17)
    big = write_mef(tmp_path / "big.fits", FLATS, 1, cards={**cards, "SEQNUM": 100_000},
                    detectors=DETECTORS[:1])
    assert problems([big]) == [f"{big} HDU 1 ({DETECTORS[0].getName()}): sequence number 100000 is not below "
                               "100000, so it cannot make the exposure ID day_obs * 100000 + seq_num"]


def test_configured_keywords(tmp_path):
    cards = {"EXPNUM": 42, "SHUTOPEN": "2024-06-02T05:00:00", "EXPOSURE": 3.0, "BAND": "sim_i",
             "CCDNAME": DETECTORS[1].getName()}
    path = write_mef(tmp_path / "custom.fits", FLATS, 0, cards=cards, detectors=DETECTORS[:1])
    config = tmp_path / "keywords.yaml"
    config.write_text("exposure_id: expnum\nstart_time: SHUTOPEN\nexposure_time: [EXPOSURE]\n"
                      "physical_filter: BAND\ndetector: CCDNAME\ndefault_observation_reason: calib\n")
    keywords = HeaderKeywords.from_file(config, default_gain=2.0)
    assert keywords.exposure_id == ("EXPNUM",)
    assert (keywords.detector, keywords.default_gain) == (("CCDNAME",), 2.0)
    [source] = scan_flats([path], CAMERA, FILTERS, keywords)
    assert (source.exposure.id, source.exposure.exposure_time) == (42, 3.0)
    assert source.detector_id == DETECTORS[1].getId()
    assert (source.exposure.physical_filter, source.exposure.observation_reason) == ("sim_i", "calib")
    with pytest.raises(pydantic.ValidationError, match="exposure_ids"):
        HeaderKeywords(exposure_ids="EXPID")


@pytest.mark.parametrize("time, day_obs", [
    ("2024-06-02T11:59:59.999", 20240601), ("2024-06-02T12:00:00", 20240602),
    ("2024-06-01T23:00:00", 20240601),
])
def test_day_obs_rolls_over_at_noon_utc(time, day_obs):
    assert day_obs_of(Time(time, scale="utc")) == day_obs


def test_detector_not_in_camera(tmp_path):
    name_path = write_mef(tmp_path / "name.fits", FLATS, 0, detectors=DETECTORS[:1])
    with fits.open(name_path, mode="update") as hdus:
        hdus[1].header["EXTNAME"] = "NOT_A_DETECTOR"
    det = DETECTORS[0]
    id_path = write_detector_file(tmp_path / "id.fits", FLATS, 0, det)
    with fits.open(id_path, mode="update") as hdus:
        hdus[0].header["DETECTOR"] = 57
    assert problems([name_path, id_path]) == [
        f"{name_path} HDU 1 (NOT_A_DETECTOR): EXTNAME='NOT_A_DETECTOR' is not a detector name of camera "
        "SimFlatCam",
        f"{id_path} HDU 1 (IMAGE): DETECTOR=57 is not a detector ID of camera SimFlatCam",
    ]


def test_image_shape_differs_from_detector(tmp_path):
    det = DETECTORS[0]
    path = write_mef(tmp_path / "shape.fits", FLATS, 0, detectors=[det], data=np.ones((16, 60)))
    assert problems([path]) == [
        f"{path} HDU 1 ({det.getName()}): image shape (ny, nx) = (16, 60) differs from the shape (16, 64) of "
        f"detector {det.getId()} ({det.getName()}) of camera SimFlatCam"]


def test_mask_and_variance_must_match_the_image(tmp_path):
    det = DETECTORS[0]
    path = write_detector_file(tmp_path / "planes.fits", FLATS, 0, det)
    with fits.open(path, mode="update") as hdus:
        hdus[2].data = hdus[2].data.astype(np.float32)
    assert problems([path]) == [f"{path} HDU 1 (IMAGE): MASK HDU 2 holds floating-point values (BITPIX=-32), "
                                "not mask bits"]
    with fits.open(path, mode="update") as hdus:
        hdus[3].data = hdus[3].data[:8]
    assert problems([path]) == [f"{path} HDU 1 (IMAGE): VARIANCE HDU 3 has shape (8, 64), the image (16, 64)"]


def test_missing_and_unusable_header_values(tmp_path):
    cards = {**FLATS.cards(0), "EXPTIME": "ten", "DATE-OBS": "yesterday", "EXPID": "abc",
             "FILTER": "sim_z", "GAIN": -1.0}
    del cards["IMGTYPE"]
    bad = write_mef(tmp_path / "bad.fits", FLATS, 0, cards=cards, detectors=DETECTORS[:1], noise_cards=False)
    empty = write_mef(tmp_path / "empty.fits", FLATS, 0, cards={"IMGTYPE": 7}, detectors=DETECTORS[1:2])
    where_bad = f"{bad} HDU 1 ({DETECTORS[0].getName()})"
    where_empty = f"{empty} HDU 1 ({DETECTORS[1].getName()})"
    assert problems([bad, empty]) == [
        f"{where_bad}: DATE-OBS='yesterday' is not an ISO 8601 time (start time)",
        f"{where_bad}: EXPTIME='ten' is not a number > 0 (exposure time)",
        f"{where_bad}: FILTER='sim_z' is not a physical filter of the instrument (registered: sim_g, sim_i, "
        "sim_r)",
        f"{where_bad}: EXPID='abc' is not an integer >= 0 (exposure ID)",
        f"{where_bad}: GAIN=-1.0 is not a number > 0 (gain)",
        f"{where_empty}: missing start time (looked for DATE-OBS, MJD-OBS)",
        f"{where_empty}: missing exposure time (looked for EXPTIME)",
        f"{where_empty}: missing physical filter (looked for FILTER)",
        f"{where_empty}: IMGTYPE=7 is not non-empty text (observation type)",
        f"{where_empty}: missing exposure ID (looked for EXPID, EXPNUM; or SEQNUM to make day_obs * 100000 + "
        "seq_num)",
    ]


def test_missing_exposure_id(tmp_path):
    cards = dict(FLATS.cards(0))
    del cards["EXPID"]
    path = write_mef(tmp_path / "noid.fits", FLATS, 0, cards=cards, detectors=DETECTORS[:1])
    assert problems([path]) == [f"{path} HDU 1 ({DETECTORS[0].getName()}): missing exposure ID (looked for "
                                "EXPID, EXPNUM; or "
                                "SEQNUM to make day_obs * 100000 + seq_num)"]


def test_duplicates_and_disagreements_between_files(tmp_path):
    det0, det1 = DETECTORS[:2]
    first = write_detector_file(tmp_path / "first.fits", FLATS, 0, det0)
    again = write_mef(tmp_path / "again.fits", FLATS, 0, detectors=[det0])
    longer = write_mef(tmp_path / "longer.fits", FLATS, 0, cards={**FLATS.cards(0), "EXPTIME": 12.5},
                       detectors=[det1])
    assert problems([first, again, longer]) == [
        f"{again} HDU 1 ({det0.getName()}): exposure {FLATS.exposure_id(0)}, detector {det0.getId()} "
        f"({det0.getName()}) is also in {first} HDU 1 (IMAGE)",
        f"{longer} HDU 1 ({det1.getName()}): exposure {FLATS.exposure_id(0)} is described differently in "
        f"{first} HDU 1 (IMAGE): exposure_time 12.5 vs 10.0",
    ]


def test_unreadable_files_and_the_whole_message(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not FITS")
    table = tmp_path / "table.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]
                 ).writeto(table)
    good = write_mef(tmp_path / "good.fits", FLATS, 0)
    with pytest.raises(FlatIngestError) as error:
        scan([good, text, table])
    [unreadable, no_image] = error.value.problems
    assert unreadable.startswith(f"{text}: not a readable FITS file (")
    assert no_image == f"{table}: no image HDU"
    assert str(error.value) == (f"Cannot ingest the flats (2 problems; nothing was ingested):\n"
                                f"  {unreadable}\n  {no_image}")
    assert problems([]) == ["no files to ingest"]
