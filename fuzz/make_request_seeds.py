#!/usr/bin/env python3
"""Writes the seed corpus of fuzz/request_fuzzer.cc: one valid request per
RPC of sae.v1.SparseAutoencoderService, as the fuzzer reads them (a byte
picking the method by its index in the service, then the serialized
message). The model "m" (4 -> 8) is the one the fuzzer's server holds.

    PYTHONPATH=build/python /usr/bin/python3 fuzz/make_request_seeds.py fuzz/corpus/requests
"""
import os
import struct
import sys

from sae.v1 import sae_pb2


def tensor(rows, cols, raw=False):
    t = sae_pb2.Tensor(shape=[rows, cols])
    values = [((i * 7) % 10) / 10.0 for i in range(rows * cols)]
    if raw:
        t.raw = struct.pack("<%df" % len(values), *values)
    else:
        t.values.values.extend(values)
    return t


def model(label=None, version=None):
    ref = sae_pb2.ModelRef(name="m")
    if label:
        ref.label = label
    if version:
        ref.version = version
    return ref


def seeds():
    train = sae_pb2.TrainRequest(model_name="t", request_id="seed")
    train.config.d_in = 4
    train.config.d_hidden = 8
    train.options.max_steps = 2
    train.inline_data.CopyFrom(tensor(8, 4))
    encode = sae_pb2.EncodeRequest(model=model(), input=tensor(2, 4), sparse=True, top_n=2)
    return {
        "Train": train,
        "GetTrainingJob": sae_pb2.GetTrainingJobRequest(job_id="job-000001-abcd"),
        "ListTrainingJobs": sae_pb2.ListTrainingJobsRequest(),
        "CancelTrainingJob": sae_pb2.CancelTrainingJobRequest(job_id="job-000001-abcd"),
        "WatchTrainingJob": sae_pb2.WatchTrainingJobRequest(job_id="job-000001-abcd"),
        "UploadDataset": sae_pb2.UploadDatasetRequest(format="csv", chunk=b"1,2,3,4\n5,6,7,8\n"),
        "ListDatasets": sae_pb2.ListDatasetsRequest(),
        "DeleteDataset": sae_pb2.DeleteDatasetRequest(dataset_id="ds-0123456789abcdef"),
        "Encode": encode,
        "Decode": sae_pb2.DecodeRequest(model=model(version=1), codes=tensor(2, 8, raw=True)),
        "Reconstruct": sae_pb2.ReconstructRequest(model=model(label="stable"), input=tensor(3, 4)),
        "Denoise": sae_pb2.DenoiseRequest(model=model(), input=tensor(1, 4, raw=True), raw_output=True),
        "StreamEncode": sae_pb2.StreamEncodeRequest(request=encode),
        "StreamReconstruct": sae_pb2.StreamReconstructRequest(
            request=sae_pb2.ReconstructRequest(model=model(), input=tensor(2, 4))),
        "StreamDenoise": sae_pb2.StreamDenoiseRequest(
            request=sae_pb2.DenoiseRequest(model=model(), input=tensor(2, 4))),
        "ListModels": sae_pb2.ListModelsRequest(),
        "GetModel": sae_pb2.GetModelRequest(name="m"),
        "DeleteModelVersion": sae_pb2.DeleteModelVersionRequest(name="m", version=7),
        "SetModelLabel": sae_pb2.SetModelLabelRequest(name="m", label="canary", version=1),
        "ImportModel": sae_pb2.ImportModelRequest(name="imported", file_name="cfg.json",
                                                  chunk=b'{"d_in": 4, "d_sae": 8}'),
        "ExportModel": sae_pb2.ExportModelRequest(model=model()),
    }


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    service = sae_pb2.DESCRIPTOR.services_by_name["SparseAutoencoderService"]
    by_name = seeds()
    for index, method in enumerate(service.methods):
        message = by_name[method.name]  # a new RPC needs a seed here
        with open(os.path.join(out, method.name.lower()), "wb") as f:
            f.write(bytes([index]) + message.SerializeToString())


if __name__ == "__main__":
    main()
