#!/usr/bin/env bash
# Run HERE, on a machine with internet, before tools/gpu_check.sh: the wheels compkit needs that the GPU image lacks
# (its python3 3.12 holds torch, torchvision, timm, accelerate, pandas, scikit-learn, pytest; see the device README),
# at the versions of this venv, into .whl/ (ignored by git; name `.whl` in the run tool's `carry`).
# fastai's text requirements (spacy and its chain) are left out: compkit never imports fastai.text
# (and the carry limit is 64 MiB).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo /.whl/ >> "$(git rev-parse --git-common-dir)/info/exclude"
PKGS="fastai==2.8.7 fastcore==1.14.5 fasttransform==0.0.2 fastprogress==1.1.6 fastdownload==0.0.8
plum-dispatch==2.10.1 beartype==0.23.1 python-fasthtml==0.14.5 starlette==1.10.0 uvicorn==0.55.0
httptools==0.9.0 watchfiles==1.3.0 websockets==17.4 httpx2==2.16.2 httpcore2==2.16.2 truststore==0.10.5
itsdangerous==2.2.0 python-multipart==0.0.34 python-dotenv==1.2.4 oauthlib==4.0.1 fastlite==0.2.4
apswutils==0.1.2 apsw==3.54.1.0 beautifulsoup4==4.15.0 soupsieve==4.1.4 nbdev==2.4.14 execnb==0.1.18
fastgit==0.1.4 ghapi==2.0.3 fastspec==0.1.0 astunparse==1.6.3 watchdog==7.1.1 asttokens==3.0.2 ipython==9.18.1
ipython-pygments-lexers==1.1.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2 pexpect==4.9.0
ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0 pure-eval==0.2.4
traitlets==5.16.1 nbconvert==7.17.2 nbformat==5.11.1 nbclient==0.11.0 jupyter-client==8.10.0
jupyter-core==5.9.1 pyzmq==27.3.0 tornado==6.6.1 fastjsonschema==2.22.3 jsonschema==4.26.0
jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 platformdirs==4.14.9 bleach==6.4.0
webencodings==0.6.1 tinycss2==1.5.1 mistune==3.4.0 defusedxml==0.7.1 pandocfilters==1.5.1
jupyterlab-pygments==0.3.0 pytorch-metric-learning==2.9.0 iterative-stratification==0.1.9"
plat=""; for n in 28 27 24 17; do plat="$plat --platform manylinux_2_${n}_x86_64"; done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl $PKGS
du -sh .whl; ls .whl | wc -l
