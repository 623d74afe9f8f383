"""`inferd capture`: the camera process that ships with inferd.

It opens a V4L2 device, an RTSP/HTTP stream, a video file or an image folder, decodes frames
(PyAV, FFmpeg inside; Pillow for images) on one thread, and sends them to an inferd `pull` or
`router` endpoint on another, in the documented protocol (docs/protocol.md). It imports the
client library and the protocol, never the daemon. docs/capture.md has the details.
"""
