import sys

from tsvllm.host.frontend_plugin import main

sys.exit(main())
