"""The larger real speech sets (LibriSpeech, Speech Commands): protocols whose attack people the model
never saw, kept apart as their docstrings say."""
from __future__ import annotations

import numpy as np
import pytest

from models.data import load_protocol
from models.data.librispeech import WINDOW_S, attack_sides, read_sexes
from models.data.probe import raw_identity, raw_primary
from tests.conftest import FAST


@pytest.fixture(scope="module")
def libri(data_dir):
    return load_protocol("speech", str(data_dir / "librispeech"), size="small" if FAST else "full")


@pytest.fixture(scope="module")
def commands(data_dir):
    return load_protocol("speech", str(data_dir / "speech_commands"), size="small" if FAST else "full")


def _people(*splits):
    return set().union(*(set(np.unique(s.identity).tolist()) for s in splits))


def test_librispeech_is_speaker_sex_on_readers_the_model_never_saw(libri, data_dir):
    assert (libri.name, libri.task, libri.train.primary_names) == ("librispeech", "sex", ["female", "male"])
    assert not _people(libri.train) & _people(libri.test, libri.attack_train, libri.attack_test)
    assert _people(libri.attack_train, libri.attack_test) <= _people(libri.test)
    for s in (libri.train, libri.test, libri.attack_train):  # both sexes in every split, near balance
        share = np.bincount(s.primary, minlength=2) / len(s)
        assert share.min() > 0.35, share
    # every window is WINDOW_S long at the corpus rate, labelled with the reader's sex from SPEAKERS.TXT
    assert libri.train.rate == 16000 and {len(w) for w in libri.train.x} == {int(WINDOW_S * 16000)}
    sexes = read_sexes(data_dir / "librispeech" / "SPEAKERS.TXT")
    for s in (libri.train, libri.attack_test):
        for i in range(0, len(s), 37):
            reader = s.identity_names[s.identity[i]]
            assert s.primary_names[s.primary[i]] == {"F": "female", "M": "male"}[sexes[reader]]


def test_librispeech_attack_windows_are_kept_apart_in_time():
    # one reader with one recording of 10 windows, one with 4 utterances of 3 windows
    identity = np.array([0] * 10 + [1] * 12)
    utt = np.array([0] * 10 + [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3])
    win = np.array(list(range(10)) + [0, 1, 2] * 4)
    train, test = attack_sides(identity, utt, win)
    assert not (train & test).any()
    one = identity == 0
    assert win[one & train].max() + 1 < win[one & test].min()  # at least one whole window between them
    assert (one & ~train & ~test).sum() == 1
    many = identity == 1
    assert set(utt[many & train]) == {0, 1, 2} and set(utt[many & test]) == {3}  # split by recording


def test_librispeech_reader_identity_is_recoverable_from_raw_windows(libri):
    # the protocol carries identity at all: a raw-statistics attacker beats chance by far
    r = raw_identity(libri)
    assert r.top1 >= 3 * r.chance
    sex = raw_primary(libri)
    assert sex.top1 > 0.6


def test_speech_commands_is_the_keyword_on_unseen_speakers(commands):
    assert (commands.name, commands.task) == ("speech-commands", "keyword")
    assert not _people(commands.train) & _people(commands.test, commands.attack_train, commands.attack_test)
    assert len(commands.train.primary_names) == (10 if FAST else 30)
    assert commands.train.rate == 16000
    assert len(commands.attack_test) > 0 and _people(commands.attack_test) <= _people(commands.attack_train)


def test_a_speech_set_asked_for_as_images_is_refused(data_dir):
    with pytest.raises(ValueError, match="speech dataset"):
        load_protocol("image", str(data_dir / "librispeech"), size="small")


def test_lfw_caps_the_photographs_per_person_so_a_few_people_do_not_set_the_chance(data_dir):
    from models.data.lfw import MAX_PER_PERSON

    p = load_protocol("image", str(data_dir / "lfw"))
    everyone = np.concatenate([p.train.identity, p.test.identity])
    assert np.bincount(everyone).max() == MAX_PER_PERSON == 20
    assert not _people(p.train) & _people(p.test, p.attack_train, p.attack_test)
    assert p.identity_chance < 0.01 and p.train.primary_names == ["female", "male"]
