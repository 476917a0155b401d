from forgetbench.cli import main
import sys
sys.exit(main())
