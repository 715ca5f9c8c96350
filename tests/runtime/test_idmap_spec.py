"""Idmapped mounts in config.json: what parses (and into what), what is refused with the field named, and that the
idmap/ridmap options never reach mount(2)'s data."""

import pytest

from pyoci.runtime import idmap
from pyoci.runtime.errors import ConfigError
from pyoci.runtime.features import default_spec, features
from pyoci.runtime.rootfs import parse_options
from pyoci.runtime.spec import IDMapping, parse_spec

MAP = [{"containerID": 0, "hostID": 1000, "size": 1}]


def config(mount: dict, user_namespace: bool = False, join: str = "") -> dict:
    c = default_spec()
    c["mounts"].append({"destination": "/data", "source": "/srv", **mount})
    if user_namespace:
        c["linux"]["namespaces"].append({"type": "user", **({"path": join} if join else {})})
        if not join:
            c["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
            c["linux"]["gidMappings"] = [{"containerID": 0, "hostID": 100000, "size": 65536}]
    return c


def last_mount(c: dict):
    return parse_spec(c).mounts[-1]


def test_mappings_parse_into_the_mount():
    m = last_mount(config({"options": ["rbind", "ridmap"], "uidMappings": MAP, "gidMappings": MAP}))
    assert m.uid_mappings == m.gid_mappings == (IDMapping(0, 1000, 1),)
    assert idmap.is_idmapped(m)


@pytest.mark.parametrize(
    "mount, user_namespace",
    [
        ({"type": "bind", "options": ["idmap"], "uidMappings": MAP, "gidMappings": MAP}, False),
        ({"options": ["bind"], "uidMappings": MAP, "gidMappings": MAP}, False),  # implied idmap (runc 1.2)
        ({"options": ["rbind", "idmap"]}, True),  # the container's user namespace mapping
        ({"options": ["bind", "ridmap"]}, True),
    ],
)
def test_accepted(mount, user_namespace):
    assert idmap.is_idmapped(last_mount(config(mount, user_namespace)))


def test_joined_user_namespace_serves_as_the_mapping():
    assert idmap.is_idmapped(last_mount(config({"options": ["bind", "idmap"]}, True, join="/proc/1/ns/user")))


def test_plain_bind_is_not_idmapped():
    assert not idmap.is_idmapped(last_mount(config({"options": ["rbind"]})))


@pytest.mark.parametrize(
    "mount, user_namespace, error",
    [
        (
            {"options": ["bind", "idmap"], "uidMappings": MAP},
            False,
            "mounts[7].gidMappings: an idmapped mount needs both uidMappings and gidMappings",
        ),
        (
            {"options": ["bind", "idmap"], "gidMappings": MAP},
            True,
            "mounts[7].uidMappings: an idmapped mount needs both",
        ),
        (
            {"type": "tmpfs", "options": ["idmap"], "uidMappings": MAP, "gidMappings": MAP},
            False,
            "mounts[7].options: an idmapped mount (uidMappings, idmap, ridmap) must be a bind mount",
        ),
        ({"type": "tmpfs", "uidMappings": MAP, "gidMappings": MAP}, False, "must be a bind mount"),
        ({"options": ["bind", "idmap", "ridmap"]}, True, "mounts[7].options: idmap and ridmap exclude each other"),
        (
            {"options": ["bind", "idmap"]},
            False,
            "mounts[7].options: idmap without uidMappings/gidMappings uses the container's user namespace; it has none",
        ),
        ({"options": ["rbind", "ridmap"]}, False, "ridmap without uidMappings/gidMappings"),
        (
            {"options": ["bind", "idmap"], "uidMappings": [{"containerID": 0, "hostID": 1, "size": 0}]},
            False,
            "mounts[7].uidMappings[0].size",
        ),
        (
            {"options": ["bind", "idmap"], "uidMappings": [{"containerID": -1, "hostID": 1, "size": 1}]},
            False,
            "mounts[7].uidMappings[0].containerID",
        ),
        (
            {"options": ["bind", "idmap"], "uidMappings": [{"hostID": 1, "size": 1}]},
            False,
            "mounts[7].uidMappings[0].containerID: required",
        ),
        (
            {"options": ["bind", "idmap"], "uidMappings": MAP * 341, "gidMappings": MAP},
            False,
            "mounts[7].uidMappings: at most 340 ranges",
        ),
    ],
)
def test_refused_with_the_field_named(mount, user_namespace, error):
    with pytest.raises(ConfigError) as info:
        parse_spec(config(mount, user_namespace))
    assert error in str(info.value)


@pytest.mark.parametrize("option", ["idmap", "ridmap"])
def test_options_never_reach_mount_data(option):
    opts = parse_options(("rbind", option, "ro", "size=1k"))
    assert opts.data == "size=1k"


def test_features_derive_from_the_code():
    f = features()
    assert {"idmap", "ridmap"} <= set(f["mountOptions"]) and set(idmap.IDMAP_OPTIONS) <= set(f["mountOptions"])
    assert f["linux"]["mountExtensions"]["idmap"]["enabled"] is idmap.supported()
