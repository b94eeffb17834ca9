"""The API's OpenAPI 3.1 description, written by hand (served at GET /api/openapi.json)."""

from __future__ import annotations

__all__ = ["openapi_spec"]

_ERROR = {"$ref": "#/components/responses/Error"}
_TIMINGS = ("read", "decode", "infer", "forward", "similar", "web", "total")  # /api/search timings_ms
IMAGE_TYPES = ("image/jpeg", "image/png", "image/gif", "image/bmp", "image/webp")  # what uploads may be
# component schemas whose every property is in every answer (made required in openapi_spec)
_ALWAYS_ALL = ("Prediction", "WebResult", "Similar", "PersonalItem", "Model", "InsideLayer", "Inside", "SearchResult")


def _schema(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict, description: str) -> dict:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _image(description: str, *media_types: str) -> dict:
    """A response whose body is an image of one of `media_types`."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    return {"description": description, "content": dict.fromkeys(media_types, binary)}


def _int(description: str = "") -> dict:
    return {"type": "integer", **({"description": description} if description else {})}


def _object(**properties: dict) -> dict:
    """An object schema whose properties are all required (always present in the answers)."""
    return {"type": "object", "required": list(properties), "properties": properties}


def openapi_spec(max_upload: int = 10_000_000) -> dict:
    """The OpenAPI document; `max_upload` is the server's upload limit in bytes."""
    mb = f"{max_upload / 1e6:g} MB"
    layer = {
        "name": "layer",
        "in": "query",
        "required": True,
        "description": "the layer's name, as in `inside.layers[].name`",
        "schema": {"type": "string", "maxLength": 200},
    }
    page = {
        "name": "page",
        "in": "query",
        "required": False,
        "description": "Page of web results, 0-based (0..20).",
        "schema": {"type": "integer", "minimum": 0, "maximum": 20, "default": 0},
    }
    item_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "integer", "minimum": 0}}
    download = {
        "name": "download",
        "in": "query",
        "required": False,
        "description": "1: send as an attachment (Content-Disposition)",
        "schema": {"type": "integer", "enum": [0, 1]},
    }
    image_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {"image": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
    personal_state = _json(_schema("PersonalState"), "Counts and limits of the personal gallery")
    doc = {
        "openapi": "3.1.0",
        "info": {
            "title": "crema image search",
            "version": "1",
            "description": (
                "Classify an image with a Caffe CNN running on crema's own kernels, find web images of the "
                "predicted label (Bing Images) and the most similar images of a local gallery and of the "
                "personal gallery (photos added through /api/personal; cosine similarity of penultimate-layer "
                'features). Errors are JSON objects {"error": "..."}.'
            ),
        },
        "paths": {
            "/api/search": {
                "post": {
                    "summary": "Search by image",
                    "description": (
                        f"Send the image as a multipart upload (field `image`, at most {mb}, JPEG/PNG/GIF/BMP/"
                        'WEBP) or as JSON {"url": "https://..."} (fetched by the server; private, loopback '
                        "and link-local addresses are refused). When web search is unavailable the answer "
                        "still holds predictions and similar images, and `web_error` says why."
                    ),
                    "parameters": [page],
                    "requestBody": {
                        "required": True,
                        "content": {
                            **image_body["content"],
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["url"],
                                    "properties": {"url": {"type": "string", "format": "uri"}},
                                }
                            },
                        },
                    },
                    "responses": {
                        "200": _json(_schema("SearchResult"), "Predictions, web results and similar images"),
                        "400": _ERROR,
                        "408": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "502": _ERROR,
                        "503": _ERROR,
                        "504": _ERROR,
                    },
                }
            },
            "/api/web": {
                "get": {
                    "summary": "More web results for a label (paging)",
                    "parameters": [
                        {"name": "q", "in": "query", "required": True, "schema": {"type": "string", "maxLength": 200}},
                        page,
                    ],
                    "responses": {
                        "200": _json(
                            _object(
                                query={"type": "string"},
                                page=_int(),
                                web={"type": "array", "items": _schema("WebResult")},
                                web_error={"type": ["string", "null"]},
                            ),
                            "One page of web results",
                        ),
                        "400": _ERROR,
                    },
                }
            },
            "/api/health": {
                "get": {
                    "summary": "Liveness and component status",
                    "responses": {"200": _json(_schema("Health"), "status, model, galleries, web, batching, limits")},
                }
            },
            "/api/models": {
                "get": {
                    "summary": "The model being served",
                    "responses": {
                        "200": _json(
                            _object(
                                models={"type": "array", "items": _schema("Model")},
                                default={"type": "string", "description": "the name of the model that answers"},
                            ),
                            "Models",
                        )
                    },
                }
            },
            "/api/gallery/{id}/thumb": {
                "get": {
                    "summary": "Thumbnail of a gallery image",
                    "parameters": [item_id],
                    "responses": {"200": _image("PNG or JPEG image", "image/png", "image/jpeg"), "404": _ERROR},
                }
            },
            "/api/gallery/{id}/image": {
                "get": {
                    "summary": "A gallery image at full size",
                    "parameters": [item_id, download],
                    "responses": {"200": _image("The image file", *IMAGE_TYPES), "404": _ERROR},
                }
            },
            "/api/personal": {
                "get": {
                    "summary": "The personal gallery: its photos, counts and limits",
                    "description": "403 when the server runs with --no-personal-gallery.",
                    "responses": {
                        "200": _json(
                            {
                                "allOf": [
                                    _schema("PersonalState"),
                                    {
                                        "type": "object",
                                        "properties": {"items": {"type": "array", "items": _schema("PersonalItem")}},
                                    },
                                ]
                            },
                            "Counts, limits and the photos, oldest first",
                        ),
                        "403": _ERROR,
                    },
                },
                "post": {
                    "summary": "Add one photo to the personal gallery",
                    "description": (
                        f"Multipart field `image`, with the checks of /api/search (at most {mb}, JPEG/PNG/GIF/BMP/"
                        "WEBP, pixel limit). The photo goes through the model like a search and its features are "
                        "kept with it, in the server's cache folder, across restarts. 409 when the gallery is full "
                        "(photo count or stored bytes, set by --personal-max-photos and --personal-max-mb)."
                    ),
                    "requestBody": image_body,
                    "responses": {
                        "201": _json(
                            {
                                "allOf": [
                                    _schema("PersonalState"),
                                    {"type": "object", "properties": {"item": _schema("PersonalItem")}},
                                ]
                            },
                            "The new photo, and the gallery's counts after it",
                        ),
                        "400": _ERROR,
                        "403": _ERROR,
                        "409": _ERROR,
                        "413": _ERROR,
                        "415": _ERROR,
                        "507": _ERROR,
                    },
                },
                "delete": {
                    "summary": "Remove every photo of the personal gallery",
                    "responses": {"200": personal_state, "403": _ERROR},
                },
            },
            "/api/personal/{id}": {
                "delete": {
                    "summary": "Remove one photo of the personal gallery",
                    "parameters": [item_id],
                    "responses": {"200": personal_state, "403": _ERROR, "404": _ERROR},
                }
            },
            "/api/personal/{id}/thumb": {
                "get": {
                    "summary": "Thumbnail of a personal photo",
                    "parameters": [item_id],
                    "responses": {"200": _image("JPEG image", "image/jpeg"), "403": _ERROR, "404": _ERROR},
                }
            },
            "/api/personal/{id}/image": {
                "get": {
                    "summary": "A personal photo as it was uploaded",
                    "parameters": [item_id, download],
                    "responses": {"200": _image("The photo as uploaded", *IMAGE_TYPES), "403": _ERROR, "404": _ERROR},
                }
            },
            "/api/inside/{id}/maps": {
                "get": {
                    "summary": "A search's feature maps of one layer, as a PNG grid",
                    "description": (
                        "The maps of the search's picture: its preprocessed input is kept for `inside.expires_s` "
                        "seconds after the search within a bounded cache, and each request runs it through the net "
                        "once (batch 1, between searches); take the URL from the layer's `maps_url` in /api/search's "
                        "`inside`. One grey tile per channel (at most 256: the first 256 channels of a wider layer), "
                        "Caffe's layout: a square-ish grid, 1-pixel white separators, each tile normalised on its own "
                        "(minimum black, maximum white). 404: the id expired or is unknown, or the layer is unknown; "
                        "400: a layer with no spatial output or a missing `layer`; 503 (Retry-After): too many maps "
                        "requests wait for the inference thread already."
                    ),
                    "parameters": [
                        {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}},
                        layer,
                    ],
                    "responses": {
                        "200": _image("PNG image", "image/png"),
                        "400": _ERROR,
                        "404": _ERROR,
                        "503": _ERROR,
                    },
                }
            },
            "/api/filters": {
                "get": {
                    "summary": "A first convolution's filters, as a PNG grid",
                    "description": (
                        "For a Convolution that reads the net's input (`filters: true` in `inside.layers`): one tile "
                        "per filter (at most 256), its weights as stored (before any BatchNorm folding), colour (RGB) "
                        "for 3 input channels, grey for 1, each tile normalised on its own, magnified by a whole "
                        "factor. 400: a layer whose filters are not images of the input's channels, or one with no "
                        "spatial output; 404: an unknown layer."
                    ),
                    "parameters": [layer],
                    "responses": {"200": _image("PNG image", "image/png"), "400": _ERROR, "404": _ERROR},
                }
            },
            "/api/openapi.json": {
                "get": {"summary": "This document", "responses": {"200": _json({"type": "object"}, "OpenAPI 3.1")}}
            },
        },
        "components": {
            "responses": {
                "Error": _json(
                    {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                    "The problem in plain words",
                )
            },
            "schemas": {
                "Prediction": {
                    "type": "object",
                    "properties": {
                        "index": {"type": "integer"},
                        "label": {"type": "string"},
                        "prob": {"type": "number", "minimum": 0, "maximum": 1},
                    },
                },
                "WebResult": {
                    "type": "object",
                    "properties": {
                        "image_url": {"type": "string"},
                        "thumb_url": {"type": "string"},
                        "page_url": {"type": "string"},
                        "title": {"type": "string"},
                        "source": {"type": "string"},
                    },
                },
                "Similar": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer", "description": "the item's id within its source"},
                        "source": {
                            "type": "string",
                            "enum": ["gallery", "personal"],
                            "description": "gallery: the --gallery index; personal: the personal gallery",
                        },
                        "thumb_url": {"type": "string"},
                        "image_url": {"type": "string"},
                        "score": {"type": "number", "description": "cosine similarity, -1..1"},
                        "label": {"type": ["string", "null"], "description": "the gallery item's label"},
                        "name": {"type": ["string", "null"], "description": "a personal photo's file name"},
                    },
                },
                "PersonalItem": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "integer"},
                        "name": {"type": ["string", "null"], "description": "the uploaded file's name, for display"},
                        "media_type": {"type": "string"},
                        "width": {"type": "integer"},
                        "height": {"type": "integer"},
                        "bytes": {"type": "integer", "description": "stored bytes: photo, thumbnail and features"},
                        "added": {"type": "string", "format": "date-time"},
                        "thumb_url": {"type": "string"},
                        "image_url": {"type": "string"},
                    },
                },
                "PersonalState": {
                    "type": "object",
                    "required": ["count", "bytes", "max_photos", "max_bytes", "revision"],
                    "properties": {
                        "count": {"type": "integer"},
                        "bytes": {"type": "integer"},
                        "max_photos": {"type": "integer"},
                        "max_bytes": {"type": "integer"},
                        "revision": {
                            "type": "integer",
                            "description": "counts the gallery's changes: of two answers, the higher is the later state",
                        },
                        "removed": {"type": "integer", "description": "DELETE only: how many photos went"},
                    },
                },
                "Health": _object(
                    status={"type": "string", "enum": ["ok"]},
                    model={"type": "string", "description": "the name of the model served"},
                    gallery={
                        "type": ["object", "null"],
                        "required": ["count", "dim", "source", "name"],
                        "properties": {
                            "count": _int("images indexed"),
                            "dim": _int("feature length"),
                            "source": {"type": ["string", "null"], "description": "folder or array"},
                            "name": {"type": ["string", "null"]},
                        },
                        "description": "the --gallery index (null: none)",
                    },
                    gallery_note={"type": ["string", "null"], "description": "why there is no gallery"},
                    personal={"oneOf": [_schema("PersonalState"), {"type": "null"}], "description": "null: off"},
                    web=_object(
                        enabled={"type": "boolean"}, available={"type": "boolean"}, reason={"type": ["string", "null"]}
                    ),
                    batching=_object(
                        enabled={"type": "boolean"},
                        adaptive={"type": "boolean"},
                        max_batch=_int(),
                        window_ms={"type": "number"},
                        requests=_int(),
                        batches=_int(),
                        mean_batch={"type": "number"},
                        sizes={
                            "type": "object",
                            "additionalProperties": _int(),
                            "description": "forward passes per batch size (keys: sizes as strings)",
                        },
                    ),
                    limits=_object(
                        decode=_schema("PoolStats"),
                        fetch=_schema("PoolStats"),
                        bodies=_object(limit=_int("bytes"), held=_int("bytes"), refused=_int()),
                    ),
                    inside={
                        "type": ["object", "null"],
                        "required": ["entries", "bytes", "max_bytes", "ttl_s", "forwards"],
                        "properties": {
                            "entries": _int("searches whose input is kept for their maps"),
                            "bytes": _int("held by those inputs"),
                            "max_bytes": _int(),
                            "ttl_s": {"type": "number"},
                            "forwards": _int("maps requests answered (one forward each)"),
                        },
                        "description": "the feature maps' cache of search inputs (null: off)",
                    },
                ),
                "PoolStats": _object(
                    workers=_int("threads"),
                    max_waiting=_int("jobs that may wait for a thread (503 past it)"),
                    running=_int(),
                    waiting=_int(),
                    done=_int(),
                    refused=_int(),
                ),
                "Model": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "prototxt": {"type": "string"},
                        "weights": {"type": "string"},
                        "labels": {"type": ["string", "null"]},
                        "input_shape": {"type": "array", "items": {"type": "integer"}},
                        "classes": {"type": "integer"},
                        "preset": {"type": "string"},
                        "feature_blob": {"type": "string"},
                        "feature_dim": {"type": "integer"},
                        "fingerprint": {"type": "string"},
                    },
                },
                "InsideLayer": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "type": {"type": "string", "description": "Convolution, Deconvolution or Pooling"},
                        "blob": {"type": "string", "description": "the blob holding the maps"},
                        "shape": {"type": "array", "items": {"type": "integer"}, "description": "(C, H, W)"},
                        "channels": {"type": "integer"},
                        "shown": {"type": "integer", "description": "tiles in the grid: min(channels, 256)"},
                        "filters": {"type": "boolean", "description": "filters_url gives its filters"},
                        "note": {
                            "type": "string",
                            "description": (
                                "what the map is: the layer's output after the layers that rewrite it in place "
                                "(BatchNorm, Scale, ReLU...), and whether they are fused into the convolution"
                            ),
                        },
                        "maps_url": {"type": "string"},
                        "filters_url": {"type": ["string", "null"]},
                        "filters_note": {
                            "type": "string",
                            "description": "what the filters grid leaves out (zero border rows/columns), or empty",
                        },
                    },
                },
                "Inside": {
                    "type": "object",
                    "properties": {
                        "id": {"type": "string", "description": "this search's maps in the cache"},
                        "expires_s": {"type": "number"},
                        "first": {"type": ["string", "null"], "description": "the first layer (shown by default)"},
                        "layers": {"type": "array", "items": _schema("InsideLayer")},
                        "normalisation": {"type": "string"},
                        "max_tiles": {"type": "integer"},
                        "filters_note": {"type": "string"},
                    },
                },
                "SearchResult": {
                    "type": "object",
                    "properties": {
                        "predictions": {"type": "array", "items": _schema("Prediction")},
                        "query": {"type": "string", "description": "the words searched on the web"},
                        "page": {"type": "integer"},
                        "web": {"type": "array", "items": _schema("WebResult")},
                        "web_error": {"type": ["string", "null"]},
                        "similar": {
                            "type": "array",
                            "items": _schema("Similar"),
                            "description": "the gallery's and the personal gallery's best matches, merged by score",
                        },
                        "similar_error": {"type": ["string", "null"]},
                        "model": _schema("Model"),
                        "inside": {
                            "oneOf": [_schema("Inside"), {"type": "null"}],
                            "description": "what the network saw: feature maps of this forward (null when off)",
                        },
                        "batch_size": {"type": "integer", "description": "requests in this forward pass"},
                        "timings_ms": {
                            "type": "object",
                            "description": (
                                "read: body / URL fetch; decode: decoding + preprocessing; infer: waiting in the "
                                "micro-batch queue + forward + gallery ranking; forward: the batch's forward and "
                                "ranking alone; similar: building the list; web: Bing (runs beside similar); total"
                            ),
                            "required": list(_TIMINGS),
                            "properties": {k: {"type": "number"} for k in _TIMINGS},
                        },
                    },
                },
            },
        },
    }
    for name in _ALWAYS_ALL:
        schema = doc["components"]["schemas"][name]
        schema["required"] = list(schema["properties"])
    return doc
