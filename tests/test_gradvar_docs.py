"""The docstring examples of the public API run and print what they say."""

import doctest

import pytest

from gradvar_optax import _gradvar, _readout


@pytest.mark.parametrize("module", [_gradvar, _readout], ids=lambda m: m.__name__)
def test_docstring_examples(module):
  result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
  assert result.attempted > 0
  assert result.failed == 0
