"""Pins of the one private dependency API the platform still uses, so an upstream change fails here.

skops has no public call that lists *every* type a file would build: ``skops.io.get_untrusted_types``
leaves out the types skops trusts by default, and Driftline's loader trusts nothing by default
(driftline_ml.models.types_in walks skops' own audit tree for that). aiokafka's private client is
no longer used: partitions come from the admin client's public ``describe_topics``. The features
service commits its durable progress through faust's ``Consumer._commit_offsets`` (which keeps
faust's ``_committed_offset`` bookkeeping in step), as faust has no public call for it. The
producers set aiokafka's lz4 level through the ``lz4_encode`` global of its batch builders.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import skops.io as sio
from sklearn.linear_model import LogisticRegression
from skops.io import _audit, _utils

from driftline_ml.models import dump_model, types_in


def test_skops_audit_tree_api_is_what_types_in_calls() -> None:
    """types_in calls read_schema(zip) → (schema, context), then get_tree(schema, load_context=, trusted=None),
    and reads module_name, class_name and children of every node."""
    assert list(inspect.signature(_utils.read_schema).parameters) == ["zip_file"]
    assert list(inspect.signature(_audit.get_tree).parameters) == ["state", "load_context", "trusted"]
    init = inspect.getsource(_audit.Node.__init__)
    assert "self.class_name, self.module_name" in init
    assert "self.children" in init


def test_types_in_sees_the_types_skops_trusts_by_default() -> None:
    """The point of the private walk: numpy types (trusted by skops by default) are listed too."""
    model = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    data = dump_model(model)
    found = types_in(data)
    assert "sklearn.linear_model._logistic.LogisticRegression" in found
    assert any(t.startswith("numpy.") for t in found), found
    # the public call leaves default-trusted numpy types out, which is why it is not enough
    untrusted = set(sio.get_untrusted_types(data=data))
    assert not any(t.startswith("numpy.") for t in untrusted)


def test_faust_commit_bookkeeping_is_what_the_features_stream_calls() -> None:
    """commit_durable reads Consumer._committed_offset[tp] (next offset, or absent) and calls
    Consumer._commit_offsets(offsets), which commits and then records the offsets as committed."""
    from faust.transport.consumer import Consumer

    params = list(inspect.signature(Consumer._commit_offsets).parameters)
    assert params[:2] == ["self", "offsets"], params
    source = inspect.getsource(Consumer._commit_offsets)
    assert "self._committed_offset.update(committable_offsets)" in source
    assert "self._committed_offset" in inspect.getsource(Consumer.__init__)


def test_aiokafka_batch_builders_compress_lz4_at_the_platform_s_level(monkeypatch: pytest.MonkeyPatch) -> None:
    """driftline.producer.use_lz4_level replaces the ``lz4_encode`` global that aiokafka's batch
    builders call; a builder's lz4 batch then goes through it, at LZ4_LEVEL, and reads back."""
    from aiokafka import codec
    from aiokafka.record.default_records import DefaultRecordBatch, DefaultRecordBatchBuilder

    from driftline.producer import LZ4_LEVEL, use_lz4_level

    levels: list[int] = []
    real = codec.lz4_encode

    def spy(payload: object, level: int = 9) -> bytes:
        levels.append(level)
        return real(payload, level=level)  # type: ignore[arg-type]

    monkeypatch.setattr(codec, "lz4_encode", spy)
    use_lz4_level()
    builder = DefaultRecordBatchBuilder(
        magic=2,
        compression_type=DefaultRecordBatch.CODEC_LZ4,
        is_transactional=False,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    for i in range(50):
        builder.append(i, timestamp=None, key=b"k", value=b"value %d " % i * 20, headers=[])
    data = builder.build()
    assert levels == [LZ4_LEVEL]
    batch = DefaultRecordBatch(bytes(data))
    assert [r.value for r in batch][-1] == b"value 49 " * 20
