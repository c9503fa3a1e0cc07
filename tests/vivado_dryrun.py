"""Run a generated Vivado Tcl script in a plain Tcl interpreter with the Vivado
commands it may use replaced by recorders.

It proves what can be proved without Vivado: the script is complete Tcl, every
variable it reads is defined, it calls no command outside the known Vivado set,
and it reaches its last line. It cannot prove Vivado accepts the arguments.
"""
from __future__ import annotations

import tkinter

#: Vivado commands the flow may call (anything else is an error in the dry run).
VIVADO_COMMANDS = """
create_project read_verilog set_property get_property close_project current_project current_fileset
ipx::package_project ipx::current_core ipx::get_bus_interfaces ipx::remove_bus_interface
ipx::add_bus_interface ipx::add_port_map ipx::add_address_space ipx::get_address_spaces
ipx::add_memory_map ipx::get_memory_maps ipx::add_address_block ipx::add_bus_parameter
ipx::create_xgui_files ipx::update_checksums ipx::check_integrity ipx::save_core
get_board_parts update_ip_catalog create_bd_design create_bd_cell apply_bd_automation
connect_bd_intf_net get_bd_intf_pins get_bd_pins connect_bd_net assign_bd_address get_bd_addr_segs
get_bd_addr_spaces
validate_bd_design save_bd_design make_wrapper get_files add_files launch_runs wait_on_run get_runs
open_run report_utilization report_timing_summary get_timing_paths
""".split()


def dry_run(script: str, *, board_parts=("*",), progress="100%", slack="0.25") -> list[list[str]]:
    """Run `script`; return the Vivado calls it made, each as [command, arg, ...]."""
    tcl = tkinter.Tcl()
    calls: list[list[str]] = []

    def record(name):
        def stub(*args):
            calls.append([name, *args])
            if name == "get_property" and args and args[0] == "PROGRESS":
                return progress
            if name == "get_property" and args and args[0] == "SLACK":
                return slack
            if name == "get_property" and args and args[0] == "name":
                return "inferred_bif"
            if name == "get_board_parts":
                part = args[-1]
                return part if "*" in board_parts or part in board_parts else ""
            if name == "ipx::get_bus_interfaces" and "-of_objects" in args and len(args) == 2:
                return "inferred_bif"
            return f"<{name}>"
        return stub

    for name in VIVADO_COMMANDS:
        tcl.createcommand(name, record(name))
    # `file copy` of build products that a dry run does not make is recorded, not run.
    tcl.eval("rename file _tcl_file")
    tcl.createcommand("_record_copy", record("file copy"))
    tcl.eval('proc file {sub args} { if {$sub eq "copy"} { return [_record_copy {*}$args] }; '
             'return [_tcl_file $sub {*}$args] }')
    tcl.eval("proc unknown {args} { error \"not a Vivado command known to the flow: $args\" }")
    if tcl.call("info", "complete", script) not in (1, "1"):
        raise SyntaxError("the Tcl script is not complete (unbalanced braces or quotes)")
    tcl.eval(script)
    return calls
