"""fedmtl/config.py's validate on any JSON-like config (a hand-edited config.json given
to `resume=`, a deployed run's `fedmtl-config`): the outcome is a validated dict or
one ConfigError line, never another exception."""

from __future__ import annotations

import copy

from hypothesis import HealthCheck, given, settings, strategies as st

from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError

DEFAULT = compose([])


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _paths(v, prefix + (k,))


PATHS = [p for p in _paths(DEFAULT) if p]
json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                      st.text(max_size=8), st.sampled_from(["", "fedavg", "sparse", "cuda", "none", "rating"]))
json_value = st.recursive(json_leaf, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                             st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                          max_leaves=6)
edit = st.tuples(st.sampled_from(PATHS), st.one_of(st.just("delete"), json_value))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edits=st.lists(edit, min_size=1, max_size=4))
def test_any_edited_config_validates_or_is_one_config_error_line(edits):
    cfg = copy.deepcopy(DEFAULT)
    for path, value in edits:
        node = cfg
        for key in path[:-1]:
            if not isinstance(node, dict) or key not in node:
                break
            node = node[key]
        else:
            if isinstance(node, dict):
                if value == "delete":
                    node.pop(path[-1], None)
                else:
                    node[path[-1]] = value
    try:
        out = validate(cfg)
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert isinstance(out, dict)
