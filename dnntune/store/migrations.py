"""Plain SQL migrations; ``schema_version`` holds the last one applied."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (  # version 1: profiles and their layers
        """CREATE TABLE profiles (
            id INTEGER PRIMARY KEY, content_sha256 TEXT NOT NULL UNIQUE,
            model_name TEXT NOT NULL, model_sha256 TEXT NOT NULL, side TEXT NOT NULL,
            device_label TEXT NOT NULL, num_threads INTEGER NOT NULL, host TEXT NOT NULL,
            tensorflow_version TEXT NOT NULL, keras_version TEXT NOT NULL,
            dnntune_version TEXT NOT NULL, created_utc TEXT NOT NULL,
            end_to_end_mean_ms REAL NOT NULL, body_json TEXT NOT NULL)""",
        """CREATE TABLE layers (
            profile_id INTEGER NOT NULL REFERENCES profiles(id) ON DELETE CASCADE,
            idx INTEGER NOT NULL, name TEXT NOT NULL, mean_ms REAL NOT NULL,
            PRIMARY KEY (profile_id, idx))""",
    ),
    (  # version 2: framework column, analyses
        "ALTER TABLE profiles ADD COLUMN framework TEXT NOT NULL DEFAULT 'tensorflow'",
        """CREATE TABLE analyses (
            id INTEGER PRIMARY KEY, content_sha256 TEXT NOT NULL UNIQUE,
            device_profile_id INTEGER REFERENCES profiles(id),
            cloud_profile_id INTEGER REFERENCES profiles(id),
            created_utc TEXT NOT NULL, body_json TEXT NOT NULL)""",
    ),
)

LATEST = len(MIGRATIONS)
