r"""Shared test configuration: hypothesis profiles.

``CI=true`` selects the ``ci`` profile: no deadline (shared runners are
slow and torch warms up on first use), a modest number of examples so that
the whole suite takes a few minutes on two cores, derandomised so that a run
is reproducible. The ``default`` profile draws more examples for local use;
``HYPOTHESIS_PROFILE`` picks any profile by name (``ci``, ``default``,
``thorough``).
"""
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

_common = dict(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile('default', max_examples=40, **_common)
settings.register_profile('ci', max_examples=20, derandomize=True,
                          database=None, print_blob=True, **_common)
settings.register_profile('thorough', max_examples=400, **_common)

_profile = os.environ.get('HYPOTHESIS_PROFILE')
if _profile is None:
    _profile = 'ci' if os.environ.get('CI', '').lower() == 'true' else \
        'default'
settings.load_profile(_profile)


@pytest.fixture(scope='module')
def one_thread():
    r"""One intra-op thread for a test module: layers run many tiny kernels,
    and on a small shared machine extra threads cost more than they give.
    Use it with ``pytestmark = pytest.mark.usefixtures('one_thread')``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
