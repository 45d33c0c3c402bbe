"""Object-storage servers on loopback for the storage tests: the GCS emulator (`gcp-storage-emulator`) and moto's
S3 server, each on a free port, with the environment that points gcsfs, s3fs, boto and tensorstore at them."""
import contextlib
import logging
import os
import socket

GCS_BUCKET, S3_BUCKET = "clap-gcs", "clap-s3"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gcs_emulator_sends_generations() -> None:
    """Real GCS sends an object's generation with its bytes (`x-goog-generation`); tensorstore (orbax's array
    writer) reads it to version its OCDBT manifest and rejects a download without it. The emulator only puts it
    in the JSON metadata: add the header to its downloads."""
    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import objects

    orig = objects.download
    if getattr(orig, "_sends_generation", False):
        return

    def download(request, response, storage, *args, **kwargs):
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
            response["x-goog-generation"] = str(obj.get("generation") or 1)
            response["x-goog-metageneration"] = str(obj.get("metageneration") or 1)
        except Exception:  # noqa: BLE001 - a missing object: the original handler answers 404
            pass
        return orig(request, response, storage, *args, **kwargs)

    download._sends_generation = True
    objects.download = download
    for _, handlers in server.HANDLERS:
        for method, fn in list(handlers.items()):
            if fn is orig:
                handlers[method] = download


@contextlib.contextmanager
def storage_servers():
    """Yields {'env': the variables to set, 'gs': 'gs://BUCKET', 's3': 's3://BUCKET'} while both servers run."""
    from gcp_storage_emulator.server import create_server
    from moto.server import ThreadedMotoServer

    for name in ("werkzeug", "gcp_storage_emulator", "gcp_storage_emulator.storage", "gcp_storage_emulator.server"):
        logging.getLogger(name).setLevel(logging.CRITICAL)   # one line per request otherwise
    _gcs_emulator_sends_generations()
    gport, sport = _free_port(), _free_port()
    gcs = create_server("127.0.0.1", gport, in_memory=True, default_bucket=GCS_BUCKET)
    gcs.start()
    httpd = getattr(getattr(gcs, "_api", None), "_httpd", None)
    if httpd is not None:   # a client closing a keep-alive connection early is no error here: no tracebacks
        httpd.handle_error = lambda request, client_address: None
    s3 = ThreadedMotoServer(ip_address="127.0.0.1", port=sport, verbose=False)
    s3.start()
    env = {
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{gport}",      # gcsfs
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",               # the emulator has no gRPC API to probe
        "TENSORSTORE_GCS_HTTP_URL": f"http://127.0.0.1:{gport}",   # tensorstore's gcs driver (orbax arrays)
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",                # ... and its credentials
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{sport}",            # s3fs / botocore, tensorstore's s3 driver
        "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_DEFAULT_REGION": "us-east-1",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    _forget_filesystems()   # fsspec caches instances with the endpoint of an earlier server
    try:
        import boto3

        boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"]).create_bucket(Bucket=S3_BUCKET)
        yield {"env": env, "gs": f"gs://{GCS_BUCKET}", "s3": f"s3://{S3_BUCKET}"}
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _forget_filesystems()
        s3.stop()
        gcs.stop()


def _forget_filesystems():
    import gcsfs
    import s3fs

    gcsfs.GCSFileSystem.clear_instance_cache()
    s3fs.S3FileSystem.clear_instance_cache()
