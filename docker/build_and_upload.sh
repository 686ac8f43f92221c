#!/usr/bin/env bash
# Builds the jsonrpc-proxy nginx image (nginx + config agent), creates its ECR repository when
# missing (with immutable tags), pushes the image under one tag that names its source and
# prints its URI: put that URI into config.<stage>.yml as ecr_image_uri. No `latest` is
# pushed: a deployment names exactly the image it runs.
#
# Usage: AWS_PROFILE=yourProfile [AWS_REGION=eu-west-1] bash docker/build_and_upload.sh
# Settings (environment):
#   AWS_REGION     region of the repository (default: AWS_DEFAULT_REGION, then the profile's)
#   REPOSITORY     ECR repository name (default jsonrpc-proxy-nginx)
#   TAG            image tag (default: the git commit; with uncommitted changes, the commit,
#                  -dirty- and the time, since a tag is never pushed twice)
#   PLATFORM       platform of the ECS container instances (default linux/amd64; use
#                  linux/arm64 for Graviton instances)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(dirname "$here")
repository=${REPOSITORY:-jsonrpc-proxy-nginx}
platform=${PLATFORM:-linux/amd64}

die() {
  printf 'build_and_upload.sh: %s\n' "$*" >&2
  exit 1
}

command -v aws >/dev/null 2>&1 \
  || die "the AWS CLI ('aws') is not installed: https://docs.aws.amazon.com/cli/latest/userguide/getting-started-install.html"
command -v docker >/dev/null 2>&1 \
  || die "docker is not installed: https://docs.docker.com/engine/install/"
docker info >/dev/null 2>&1 \
  || die "docker is installed but its daemon does not answer (is it running, and may this user use it?)"

region=${AWS_REGION:-${AWS_DEFAULT_REGION:-}}
if [ -z "$region" ]; then
  region=$(aws configure get region 2>/dev/null || true)
fi
[ -n "$region" ] || die "no AWS region: set AWS_REGION (or a region in your AWS profile)"

account=$(aws sts get-caller-identity --query Account --output text 2>/dev/null) \
  || die "no usable AWS credentials ('aws sts get-caller-identity' failed): set AWS_PROFILE or AWS credentials"

if [ -z "${TAG:-}" ]; then
  if TAG=$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null); then
    git -C "$root" diff --quiet HEAD -- Cargo.toml Cargo.lock crates docker 2>/dev/null \
      || TAG="$TAG-dirty-$(date -u +%Y%m%d%H%M%S)"
  else
    TAG=$(date -u +%Y%m%d%H%M%S)
  fi
fi

registry="$account.dkr.ecr.$region.amazonaws.com"
uri="$registry/$repository"

if ! describe_error=$(aws ecr describe-repositories --region "$region" \
  --repository-names "$repository" 2>&1 >/dev/null); then
  case "$describe_error" in
    *RepositoryNotFoundException*)
      printf 'creating ECR repository %s in %s\n' "$repository" "$region" >&2
      aws ecr create-repository --region "$region" --repository-name "$repository" \
        --image-tag-mutability IMMUTABLE --image-scanning-configuration scanOnPush=true >/dev/null \
        || die "cannot create ECR repository $repository"
      ;;
    *) die "cannot look up ECR repository $repository: $describe_error" ;;
  esac
fi

aws ecr get-login-password --region "$region" \
  | docker login --username AWS --password-stdin "$registry" >/dev/null \
  || die "docker login to $registry failed"

printf 'building %s:%s for %s\n' "$uri" "$TAG" "$platform" >&2
DOCKER_BUILDKIT=1 docker build --platform "$platform" \
  --file "$here/Dockerfile" --tag "$uri:$TAG" "$root" >&2
docker push "$uri:$TAG" >&2 \
  || die "pushing $uri:$TAG failed (a tag is pushed once: set TAG to a new one to push again)"

# The one line on stdout: the image URI for config.<stage>.yml (ecr_image_uri).
printf '%s:%s\n' "$uri" "$TAG"
