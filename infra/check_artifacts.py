"""Checks that `sls package` gives every function its own code.

    python3 infra/check_artifacts.py PACKAGE_DIR CARGO_TARGET_DIR

PACKAGE_DIR is the output of `sls package --package PACKAGE_DIR`. For every
AWS::Lambda::Function of its template:
- its Code.S3Key differs from every other function's (the framework uploads each artifact
  under its file name: equal names overwrite each other in the deployment bucket);
- the artifact the framework uploads under that key (serverless-state.json names it) holds an
  executable AArch64 ELF `bootstrap` identical to the binary cargo lambda built for the
  function's own binary (`<target>/aarch64-unknown-linux-gnu/release/<function>`).
Exits 1 with one line per problem.
"""

import hashlib
import json
import os
import sys
import zipfile


def problems(package_dir, target_dir):
    with open(os.path.join(package_dir, "cloudformation-template-update-stack.json")) as f:
        template = json.load(f)
    with open(os.path.join(package_dir, "serverless-state.json")) as f:
        state = json.load(f)
    service_dir = state["service"].get("serviceDir") or os.getcwd()
    prefix = f'{state["service"]["service"]}-{state["service"]["provider"]["stage"]}-'
    artifacts = {
        name: os.path.join(service_dir, function["package"]["artifact"])
        for name, function in state["service"]["functions"].items()
    }
    found = []
    keys = {}
    for logical, resource in template["Resources"].items():
        if resource["Type"] != "AWS::Lambda::Function":
            continue
        properties = resource["Properties"]
        name = properties["FunctionName"].removeprefix(prefix)
        key = properties["Code"]["S3Key"]
        if key in keys:
            found.append(f"{name} and {keys[key]} share the S3 key {key}")
        keys[key] = name
        artifact = artifacts.get(name)
        if artifact is None:
            found.append(f"{logical}: no function {name!r} in serverless-state.json")
            continue
        if os.path.basename(artifact) != os.path.basename(key):
            found.append(f"{name}: S3 key {key} is not its artifact {artifact}")
        built = os.path.join(target_dir, "aarch64-unknown-linux-gnu", "release", name)
        try:
            with zipfile.ZipFile(artifact) as archive:
                info = archive.getinfo("bootstrap")
                code = archive.read(info)
        except (OSError, KeyError, zipfile.BadZipFile) as error:
            found.append(f"{name}: {artifact} holds no bootstrap ({error})")
            continue
        # ELF, 64-bit, little endian; e_machine 0xB7 = AArch64; executable permission bits.
        if code[:6] != b"\x7fELF\x02\x01" or code[18:20] != b"\xb7\x00":
            found.append(f"{name}: bootstrap in {artifact} is not an AArch64 ELF executable")
        if not (info.external_attr >> 16) & 0o111:
            found.append(f"{name}: bootstrap in {artifact} is not executable")
        try:
            with open(built, "rb") as f:
                own = f.read()
        except OSError as error:
            found.append(f"{name}: cannot read its binary ({error})")
            continue
        if hashlib.sha256(code).digest() != hashlib.sha256(own).digest():
            found.append(f"{name}: bootstrap in {artifact} is not the binary {name}")
    if not keys:
        found.append("the template has no Lambda function")
    return found


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    found = problems(sys.argv[1], sys.argv[2])
    for line in found:
        print(f"check_artifacts: {line}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
