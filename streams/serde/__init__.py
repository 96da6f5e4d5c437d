"""Wire formats: Avro single-object encoding (default) and Confluent framing (read)."""

from streams.serde.codec import AvroCodec
from streams.serde.schemas import SchemaVersion, current, versions

__all__ = ["AvroCodec", "SchemaVersion", "current", "versions"]
