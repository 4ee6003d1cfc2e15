#!/usr/bin/env python3
"""A sample Python client of the sparse autoencoder service.

Checks the server's health, encodes a NumPy array into sparse codes, and
denoises it. The stubs are generated from proto/ at build time into
build/python (run scripts/setup.sh first):

    PYTHONPATH=build/python python3 client/python/sae_example.py \\
        --server=localhost:50051 --model=digits --input=data/mnist-2500-images-u8.npy

Against a server with TLS and tokens (docs/security.md), add --tls-ca=ca.pem
(and --tls-cert/--tls-key for mutual TLS) and --token-file=read.token.

Needs Debian's python3-grpcio, python3-protobuf and python3-numpy.
"""
import argparse
import sys

import grpc
import numpy as np

from sae.v1 import sae_pb2, sae_pb2_grpc


def to_tensor(array):
    """A float32 matrix as the API's Tensor (raw little-endian bytes)."""
    array = np.ascontiguousarray(array, dtype="<f4")
    if array.ndim == 1:
        array = array[None, :]
    return sae_pb2.Tensor(shape=list(array.shape), raw=array.tobytes())


def from_tensor(tensor):
    """The API's Tensor as a float32 NumPy matrix."""
    if tensor.WhichOneof("data") == "raw":
        values = np.frombuffer(tensor.raw, dtype="<f4")
    else:
        values = np.asarray(tensor.values.values, dtype=np.float32)
    return values.reshape(tuple(tensor.shape))


def check_health(channel):
    """True when grpc.health.v1 says SERVING (a field-1 varint of 1)."""
    check = channel.unary_unary(
        "/grpc.health.v1.Health/Check",
        request_serializer=lambda _: b"",
        response_deserializer=lambda data: data)
    reply = check(None, timeout=10)
    return reply[:2] == b"\x08\x01"


def make_channel(args):
    """A plaintext channel, or a TLS one when any TLS file is given."""
    if not (args.tls_ca or args.tls_cert or args.tls_key):
        return grpc.insecure_channel(args.server)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ValueError("--tls-cert and --tls-key go together")

    def read(path):
        with open(path, "rb") as f:
            return f.read()

    credentials = grpc.ssl_channel_credentials(
        root_certificates=read(args.tls_ca) if args.tls_ca else None,
        private_key=read(args.tls_key) if args.tls_key else None,
        certificate_chain=read(args.tls_cert) if args.tls_cert else None)
    return grpc.secure_channel(args.server, credentials)


def call_metadata(args):
    """The bearer token, if any, as the metadata of every call."""
    if not args.token_file:
        return None
    with open(args.token_file) as f:
        token = f.read().strip()
    if not token or any(c.isspace() for c in token):
        raise ValueError("--token-file must hold one token and nothing else")
    return [("authorization", "Bearer " + token)]


def psnr(clean, estimate):
    mse = float(np.mean((clean - estimate) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(1.0 / mse)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="localhost:50051")
    parser.add_argument("--model", required=True, help="NAME (the latest version is used)")
    parser.add_argument("--input", required=True, help=".npy of rows (uint8 is scaled to [0, 1])")
    parser.add_argument("--rows", type=int, default=8, help="how many rows to send")
    parser.add_argument("--noise", type=float, default=0.3, help="Gaussian noise added before Denoise")
    parser.add_argument("--tls-ca", help="PEM CA that signs the server's certificate (TLS)")
    parser.add_argument("--tls-cert", help="PEM client certificate (mutual TLS)")
    parser.add_argument("--tls-key", help="PEM private key of --tls-cert")
    parser.add_argument("--token-file", help="file holding the bearer token")
    args = parser.parse_args()
    try:
        channel = make_channel(args)
        metadata = call_metadata(args)
    except (OSError, ValueError) as e:
        print(f"cannot set up the connection: {e}", file=sys.stderr)
        return 2

    if args.rows < 1:
        print(f"--rows must be >= 1, got {args.rows}", file=sys.stderr)
        return 2
    try:
        data = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as e:
        print(f"cannot read --input {args.input}: {e}", file=sys.stderr)
        return 2
    if not isinstance(data, np.ndarray) or data.ndim < 1 or len(data) == 0:
        print(f"--input {args.input}: expected a non-empty array of rows", file=sys.stderr)
        return 2
    if data.dtype == np.uint8:
        data = data.astype(np.float32) / 255.0
    x = data.reshape(len(data), -1)[-args.rows:].astype(np.float32)

    try:
        if not check_health(channel):
            print(f"server at {args.server} is not serving", file=sys.stderr)
            return 1
    except grpc.RpcError as e:
        print(f"server unreachable at {args.server}: {e.details()}", file=sys.stderr)
        return 1
    print(f"{args.server}: SERVING")
    stub = sae_pb2_grpc.SparseAutoencoderServiceStub(channel)
    model = sae_pb2.ModelRef(name=args.model)

    try:
        codes = stub.Encode(sae_pb2.EncodeRequest(model=model, input=to_tensor(x), sparse=True,
                                                  top_n=5), timeout=30, metadata=metadata)
        sparse = codes.sparse
        first = list(zip(sparse.indices[sparse.row_offsets[0]:sparse.row_offsets[1]],
                         sparse.values[sparse.row_offsets[0]:sparse.row_offsets[1]]))
        print(f"encoded {sparse.rows} rows with {args.model}@{codes.model_version}; "
              f"row 0 top units: " + ", ".join(f"{u}:{v:.3f}" for u, v in first))

        rng = np.random.default_rng(0)
        noisy = np.clip(x + rng.normal(0, args.noise, x.shape), 0, 1).astype(np.float32)
        reply = stub.Denoise(sae_pb2.DenoiseRequest(model=model, input=to_tensor(noisy),
                                                    raw_output=True), timeout=30,
                              metadata=metadata)
        clean = from_tensor(reply.output)
    except grpc.RpcError as e:
        print(f"call failed: {e.code().name}: {e.details()}", file=sys.stderr)
        return 1
    print(f"denoised {clean.shape[0]} rows: PSNR {psnr(x, noisy):.2f} dB noisy -> "
          f"{psnr(x, clean):.2f} dB denoised")
    return 0


if __name__ == "__main__":
    sys.exit(main())
