"""Runs moto's S3-compatible server on 127.0.0.1 for the tests.

Usage: python3 s3_server.py PORT BUCKET
Prints "READY" once the bucket exists, then serves until standard input closes
(the test process that started it exited), so no server outlives its tests.
"""
import sys

import boto3
from moto.server import ThreadedMotoServer


def main() -> None:
    port, bucket = int(sys.argv[1]), sys.argv[2]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    s3 = boto3.client(
        "s3",
        endpoint_url=f"http://127.0.0.1:{port}",
        aws_access_key_id="tidemark",
        aws_secret_access_key="tidemark",
        region_name="us-east-1",
    )
    s3.create_bucket(Bucket=bucket)
    print("READY", flush=True)
    sys.stdin.read()
    server.stop()


if __name__ == "__main__":
    main()
