"""Triton Python-backend model: encoded PNG/JPEG bytes -> the classifier's input tensor.

Written into a repository by ``psvit-export triton``; the preprocessing (resize, crop, normalise) is the
artifact's own, recorded in ``config.pbtxt`` ``parameters.preprocess``. A request whose bytes are not an
image gets an error of its own; the other requests of the batch are answered.
"""
import json

import triton_python_backend_utils as pb_utils
from psvit_vendored.errors import PSViTError
from psvit_vendored.preprocessing import Preprocess, decode_image


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.preprocess = Preprocess.from_dict(json.loads(config["parameters"]["preprocess"]["string_value"]))
        output = config["output"][0]
        self.output_name = output["name"]
        self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        self.input_name = config["input"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            rows = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()  # (n, 1) bytes
            try:
                images = [decode_image(bytes(row[0])) for row in rows]
            except PSViTError as exc:
                responses.append(pb_utils.InferenceResponse(error=pb_utils.TritonError(str(exc))))
                continue
            x = self.preprocess.batch(images).astype(self.dtype)  # (n, C, H, W)
            responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(self.output_name, x)]))
        return responses
