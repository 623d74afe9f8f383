"""Frames in: the IO loop and its sockets, foreign protocols (Frigate), routing, CURVE/ZAP."""
