"""What crosses a cut, encoded as an app ships it: codecs, sample inputs, measurements."""
