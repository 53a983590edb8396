"""Rotating device pseudonyms: stable within a period, unlinkable across periods, always mapped back at home."""
from __future__ import annotations

import os
import stat

import pytest

from gateway.pseudonyms import DAY_S, Pseudonyms, load_or_make_key
from schemas.features import make_id, split_id
from tests.gateway_fixtures import (Listener, features_in, full_bundles, gateway_bundles,  # noqa: F401
                                    image_frame, make_gateway)
from workers.config import RedisSettings, WorkerSettings
from workers.service import Worker

KEY = bytes(range(32))
T0 = 1_800_000_000.0  # some day


def test_stable_within_a_period_and_different_in_the_next():
    p = Pseudonyms(KEY)
    a = p.hide("camera-1", 77, 5, ts=T0)
    assert p.hide("camera-1", 77, 5, ts=T0 + 60) == a  # retries and dedup see one id
    b = p.hide("camera-1", 77, 5, ts=T0 + DAY_S)
    assert a[0] != b[0] and a[1] != b[1] and a[2] != b[2]
    assert p.hide("camera-2", 77, 5, ts=T0)[0] != a[0]
    assert Pseudonyms(bytes(32)).hide("camera-1", 77, 5, ts=T0)[0] != a[0]  # another home, other names


def test_consecutive_messages_keep_their_order_but_not_the_real_numbers():
    p = Pseudonyms(KEY)
    seqs = [p.hide("mic-1", None, s, ts=T0)[2] for s in range(5)]
    assert seqs == list(range(seqs[0], seqs[0] + 5)) and seqs[0] != 0
    assert p.hide("mic-1", None, 0, ts=T0)[1] is not None  # a boot id even when the sensor sent none


def test_what_was_issued_is_revealed_and_nothing_else():
    p = Pseudonyms(KEY)
    for device, boot, seq in (("camera-1", 77, 5), ("mic-1", None, 0), ("cam", 2**62, 2**63 - 1)):
        hidden = p.hide(device, boot, seq, ts=T0)
        assert p.reveal(*hidden) == (device, boot, seq)
        gw_id = make_id("home", *[hidden[0], hidden[2], hidden[1]])  # a valid wire id
        assert split_id(gw_id).device == hidden[0]
    assert p.reveal("dnotissued", 1, 1) is None and p.reveal(hidden[0], None, 1) is None


def test_the_previous_period_is_revealed_and_older_ones_are_forgotten():
    p = Pseudonyms(KEY)
    old = p.hide("camera-1", 1, 1, ts=T0)
    p.hide("camera-1", 1, 2, ts=T0 + DAY_S)
    assert p.reveal(*old) == ("camera-1", 1, 1)  # results of inputs sent just before the rotation
    p.hide("camera-1", 1, 3, ts=T0 + 2 * DAY_S)
    assert p.reveal(*old) is None


def test_the_table_survives_a_restart_and_the_key_file_is_private(tmp_path):
    key = load_or_make_key(tmp_path / "state" / "pseudonym.key")
    assert stat.S_IMODE(os.stat(tmp_path / "state" / "pseudonym.key").st_mode) == 0o600
    assert load_or_make_key(tmp_path / "state" / "pseudonym.key") == key
    import time
    p = Pseudonyms(key, table=tmp_path / "state" / "pseudonyms.json")
    hidden = p.hide("camera-1", 9, 42, ts=time.time())
    p.save()
    again = Pseudonyms(key, table=tmp_path / "state" / "pseudonyms.json")
    assert again.reveal(*hidden) == ("camera-1", 9, 42)
    with pytest.raises(ValueError):
        Pseudonyms(b"short")


# --- through a gateway and a worker -------------------------------------------------------------------

def test_the_cloud_sees_pseudonyms_and_the_home_gets_its_real_ids_back(make_gateway, mosquitto, redis_server,
                                                                       full_bundles, tmp_path):  # noqa: F811
    import redis as redis_lib

    worker = Worker(WorkerSettings(redis=RedisSettings.from_dsn(redis_server.url), name="wps", block_ms=50,
                                   bundles=(full_bundles["image"], full_bundles["speech"]))).start()
    lis = Listener(mosquitto.port, client_id="ps-listener")
    try:
        spool = tmp_path / "spool"
        gw = make_gateway(id="gwp", pseudonym_period_s=DAY_S, spool_dir=str(spool))
        for seq in (1, 2):
            lis.publish("privedge/cam1/image", image_frame("cam1", seq).encode())
        assert lis.wait_for(lambda l: len(l.messages["privedge/cam1/result"]) >= 2, 60)
        results = lis.json("privedge/cam1/result")
        assert sorted(r["id"] for r in results) == ["gwp/cam1/1", "gwp/cam1/2"]  # the home's own ids
        sent = features_in(redis_lib.Redis.from_url(redis_server.url), "glasses", "gwp")
        assert len(sent) == 2 and {m.device for m in sent} != {"cam1"} and len({m.device for m in sent}) == 1
        assert all(m.boot is not None and m.seq not in (1, 2) for m in sent)
        assert "cam1" not in str([m.id for m in sent])
        assert (spool / "gwp" / "pseudonym.key").exists() and (spool / "gwp" / "pseudonyms.json").exists()
        # a restarted gateway (same spool) still maps what it issued before
        gw.stop()
        again = Pseudonyms(load_or_make_key(spool / "gwp" / "pseudonym.key"), table=spool / "gwp" / "pseudonyms.json")
        assert again.reveal(sent[0].device, sent[0].boot, sent[0].seq)[0] == "cam1"
    finally:
        lis.close()
        worker.stop()
