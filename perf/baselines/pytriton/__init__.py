"""PyTriton serving the same ONNX model, from a throwaway virtual environment outside the project's dependencies."""
