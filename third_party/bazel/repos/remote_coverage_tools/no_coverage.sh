#!/bin/sh
echo "bazel coverage is not available offline (stub @remote_coverage_tools, see third_party/bazel/README.md)" >&2
exit 1
