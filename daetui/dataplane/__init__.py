"""The kernel side: BCC loading of bpf/, TC attach and policy routing through a journal that undoes
them, interface monitoring, and typed access to the maps. Knows nothing of protocols."""
