"""LiteRT (TensorFlow Lite), the runtime phones run: conversion with a layer map, head
latencies per cut, on-phone op profiles imported as device profiles, and the
framework/precision study."""
