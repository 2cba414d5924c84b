"""Triton Python-backend model: logits -> top-k class names, probabilities (softmax) and indices.

Written into a repository by ``psvit-export triton``; ``k`` and the class names come from
``config.pbtxt`` ``parameters`` (the artifact's recorded class names).
"""
import json

import numpy as np
import triton_python_backend_utils as pb_utils
from psvit_vendored.runtime.predict import top_k


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = config["parameters"]
        self.topk = int(params["topk"]["string_value"])
        self.class_names = json.loads(params["class_names"]["string_value"])
        self.input_name = config["input"][0]["name"]

    def execute(self, requests):
        responses = []
        for request in requests:
            logits = pb_utils.get_input_tensor_by_name(request, self.input_name).as_numpy()  # (n, classes)
            rows = top_k(logits.astype(np.float32), self.topk, self.class_names)
            labels = np.array([[p.name.encode() for p in row] for row in rows], dtype=np.object_)  # (n, k)
            probs = np.array([[p.probability for p in row] for row in rows], dtype=np.float32)
            indices = np.array([[p.index for p in row] for row in rows], dtype=np.int32)
            responses.append(pb_utils.InferenceResponse([
                pb_utils.Tensor("labels", labels), pb_utils.Tensor("probabilities", probs),
                pb_utils.Tensor("indices", indices),
            ]))
        return responses
